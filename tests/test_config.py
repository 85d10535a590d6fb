"""The config file: TOML, YAML and organism.yaml, every rejection naming its key, keys only from the
environment (and .env files that never override it), the no-config defaults, and ``check-config``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_rpc.config import (
    USUAL_KEY_ENVS,
    BackendConfig,
    Config,
    default_config,
    load_config,
    load_config_with_source,
    load_env_file,
    parse_env,
)
from llm_rpc.core.router import Router
from llm_rpc.errors import ConfigError
from llm_rpc.providers import Provider
from llm_rpc.providers.mock import MockProvider

ROOT = Path(__file__).resolve().parent.parent
CANARY = "sk-canary-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No provider key or LLM_RPC_* variable leaks in; whatever a .env sets is undone afterwards."""
    saved = dict(os.environ)
    for name in [*USUAL_KEY_ENVS.values(), "LLM_RPC_CONFIG"]:
        monkeypatch.delenv(name, raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rejection(path: Path, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value


def assert_names(error: ConfigError, path: str, *words: str) -> None:
    """The message and data.path name the key; the message says what is wrong; no key value leaks."""
    assert error.data["path"] == path
    assert f": {path}: " in error.message, error.message
    for word in words:
        assert word in error.message, (word, error.message)
    assert CANARY not in error.message
    assert CANARY not in json.dumps(error.to_data())


MINIMAL = '[[backends]]\nprovider = "mock"\n'


# -- TOML ---------------------------------------------------------------------------------------------


def test_a_full_toml_file_decodes_into_the_structs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "llm-rpc.toml",
        """
[router]
strategy = "round-robin"
retries = 2
timeout_seconds = 30

[[backends]]
name = "openai-main"
provider = "openai"
api_key_env = "OPENAI_API_KEY"
api_key_envs = ["OPENAI_API_KEY_2", "OPENAI_API_KEY"]
models = ["gpt-4o*"]
priority = 1
rate_limit_tpm = 100000
rate_limit_rpm = 500
max_concurrent = 20
timeout_seconds = 45
headers = { "X-Title" = "my-app" }
tags = ["cloud"]

[[backends]]
provider = "mock"
latency_ms = 5
fail_rate = 0.5
fail_type = "overloaded"

[[models]]
name = "gpt-4o"
input = 2.5
output = 10
""",
    )
    config = load_config(path)
    assert config.router.strategy == "round-robin"
    assert config.router.retries == 2
    assert config.router.timeout_seconds == 30.0
    openai, mock = config.backends
    assert openai.backend_name == "openai-main"
    assert openai.key_envs == ["OPENAI_API_KEY", "OPENAI_API_KEY_2"]
    assert openai.models == ["gpt-4o*"]
    assert (openai.rate_limit_tpm, openai.rate_limit_rpm, openai.max_concurrent) == (100000, 500, 20)
    assert openai.timeout_seconds == 45.0
    assert openai.headers == {"X-Title": "my-app"}
    assert openai.tags == ["cloud"]
    assert (mock.latency_ms, mock.fail_rate, mock.fail_type) == (5.0, 0.5, "overloaded")
    assert mock.key_envs == []
    assert config.models[0].name == "gpt-4o"
    assert config.models[0].output == 10.0


def test_a_backend_without_a_key_variable_uses_its_providers_usual_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.toml",
        """
[[backends]]
provider = "anthropic"
[[backends]]
provider = "ollama"
[[backends]]
provider = "openai-compatible"
base_url = "http://127.0.0.1:8000/v1"
""",
    )
    anthropic, ollama, compatible = load_config(path).backends
    assert anthropic.key_envs == ["ANTHROPIC_API_KEY"]
    assert ollama.key_envs == []
    assert compatible.key_envs == []


def test_api_keys_are_read_from_the_environment_as_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K1", CANARY)
    monkeypatch.setenv("K3", "")
    backend = BackendConfig(provider="openai", api_key_env="K1", api_key_envs=["K2", "K3", "K1"])
    keys = backend.api_keys()
    assert [k.reveal() for k in keys] == [CANARY]
    assert CANARY not in repr(keys)
    assert CANARY not in repr(backend)


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("[routr]\nretries = 1\n" + MINIMAL, "routr", ("unknown key", "`router`")),
        ("[router]\nretrys = 1\n" + MINIMAL, "router.retrys", ("unknown key", "`retries`")),
        ('[[backends]]\nprovider = "openai"\nmodles = ["x"]\n', "backends[0].modles", ("unknown key", "`models`")),
        (MINIMAL + '[[backends]]\nname = "b"\nprovider = "mock"\nzzz = 1\n', "backends[1].zzz", ("known keys",)),
        (MINIMAL + '[[models]]\nname = "m"\ninput = 1\noutput = 2\ncache = 3\n', "models[0].cache", ("unknown key",)),
    ],
)
def test_an_unknown_key_is_rejected_with_its_path(tmp_path: Path, text: str, path: str, words: tuple[str]) -> None:
    assert_names(rejection(write(tmp_path, "c.toml", text)), path, *words)


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ('[[backends]]\nprovider = "openai"\npriority = "high"\n', "backends[0].priority", "int"),
        ('[[backends]]\nprovider = "openai"\nmax_concurrent = 0\n', "backends[0].max_concurrent", "int >= 1"),
        ('[[backends]]\nprovider = "openai"\ntimeout_seconds = 0\n', "backends[0].timeout_seconds", "float > 0"),
        ('[[backends]]\nprovider = "openai"\nmodels = "gpt-4o"\n', "backends[0].models", "list | null"),
        ('[[backends]]\nprovider = "openai"\nlocal = "yes"\n', "backends[0].local", "bool"),
        ('[[backends]]\nprovider = "mock"\nfail_rate = 2\n', "backends[0].fail_rate", "float <= 1"),
        ('[[backends]]\nprovider = "openai"\nheaders = { "X-A" = 1 }\n', "backends[0].headers[...]", "str"),
        ('[[backends]]\nprovider = "openai"\ntags = "a"\n', "backends[0].tags", "list"),
        ("[router]\nretries = -1\n" + MINIMAL, "router.retries", "int >= 0"),
        ('[router]\ntimeout_seconds = "120"\n' + MINIMAL, "router.timeout_seconds", "float"),
        ("backends = 5\n", "backends", "list"),
        (MINIMAL + '[[models]]\nname = "m"\ninput = "1"\noutput = 2\n', "models[0].input", "float"),
    ],
)
def test_a_wrong_type_names_the_field_and_the_expected_type(
    tmp_path: Path, text: str, path: str, expected: str
) -> None:
    error = rejection(write(tmp_path, "c.toml", text))
    assert_names(error, path, "expected", expected)
    assert expected in error.data["expected"]


@pytest.mark.parametrize(
    ("text", "path", "allowed"),
    [
        ('[[backends]]\nprovider = "opneai"\n', "backends[0].provider", "openai-compatible"),
        ('[router]\nstrategy = "random"\n' + MINIMAL, "router.strategy", "round-robin"),
    ],
)
def test_a_bad_choice_lists_the_allowed_values(tmp_path: Path, text: str, path: str, allowed: str) -> None:
    assert_names(rejection(write(tmp_path, "c.toml", text)), path, "expected one of", allowed)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[[backends]]\nname = "x"\n', "backends[0].provider"),
        (MINIMAL + '[[models]]\nname = "m"\noutput = 2\n', "models[0].input"),
    ],
)
def test_a_missing_required_key_is_named(tmp_path: Path, text: str, path: str) -> None:
    assert_names(rejection(write(tmp_path, "c.toml", text)), path, "required key is missing")


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("", "backends", ("no backends",)),
        ("[router]\nretries = 1\n", "backends", ("no backends",)),
        (MINIMAL + MINIMAL, "backends[1].name", ("two backends are named 'mock'", "backends[0]")),
        ('[[backends]]\nprovider = "openai-compatible"\n', "backends[0].base_url", ("required",)),
        ('[[backends]]\nprovider = "openai"\nbase_url = "api.openai.com"\n', "backends[0].base_url", ("http",)),
        ('[[backends]]\nprovider = "openai"\nlatency_ms = 5\n', "backends[0].latency_ms", ('"mock"',)),
        ('[[backends]]\nprovider = "anthropic"\nfail_type = "auth"\n', "backends[0].fail_type", ('"mock"',)),
        ('[[backends]]\nprovider = "mock"\nfail_type = "flaky"\n', "backends[0].fail_type", ("rate_limited",)),
        ("[router]\nretry_base_delay = 10\nretry_max_delay = 5\n" + MINIMAL, "router.retry_max_delay", ("at least",)),
        (
            MINIMAL + '[[models]]\nname = "m"\ninput = 1\noutput = 1\n[[models]]\nname = "m"\ninput = 2\noutput = 2\n',
            "models[1].name",
            ("priced twice",),
        ),
        ('[[backends]]\nprovider = "openai"\nheaders = { "X A" = "b" }\n', "backends[0].headers.X A", ("header",)),
        ('[[backends]]\nprovider = "openai"\nheaders = { "X-A" = "b\\nc" }\n', "backends[0].headers.X-A", ("line",)),
    ],
)
def test_checks_beyond_types_name_the_key(tmp_path: Path, text: str, path: str, words: tuple[str]) -> None:
    assert_names(rejection(write(tmp_path, "c.toml", text)), path, *words)


@pytest.mark.parametrize(
    ("backend", "path"),
    [
        (f'api_key = "{CANARY}"', "backends[0].api_key"),
        (f'key = "{CANARY}"', "backends[0].key"),
        (f'token = "{CANARY}"', "backends[0].token"),
        (f'secret = "{CANARY}"', "backends[0].secret"),
        (f'openai_api_key = "{CANARY}"', "backends[0].openai_api_key"),
        (f'API-Key = "{CANARY}"', "backends[0].API-Key"),
        (f'api_key_env = "{CANARY}"', "backends[0].api_key_env"),
        (f'api_key_envs = ["OK_NAME", "{CANARY}"]', "backends[0].api_key_envs[1]"),
        ('api_key_env = "AbCdEf0123456789XyZ0123456789aBcDeF0123"', "backends[0].api_key_env"),
        ('headers = { X-Token = "3f9a7c1e5b2d4a6c8e0f1a3b5c7d9e1f" }', "backends[0].headers.X-Token"),
        ('"sk-canary-0123456789abcdef" = "x"', "backends[0]"),
        (f'tags = ["{CANARY}"]', "backends[0].tags[0]"),
        (f'name = "{CANARY}"', "backends[0].name"),
        (f'headers = {{ Authorization = "Bearer {CANARY}" }}', "backends[0].headers.Authorization"),
        (f'headers = {{ X-Goog-Api-Key = "{CANARY}" }}', "backends[0].headers.X-Goog-Api-Key"),
        (f'headers = {{ X-Custom = "Bearer {CANARY}" }}', "backends[0].headers.X-Custom"),
        (f'base_url = "https://example.org/v1?key={CANARY}"', "backends[0].base_url"),
        (f'base_url = "https://user:{CANARY}@example.org/v1"', "backends[0].base_url"),
    ],
)
def test_a_literal_key_in_the_file_is_rejected_saying_why_without_quoting_it(
    tmp_path: Path, backend: str, path: str
) -> None:
    text = f'[[backends]]\nprovider = "openai"\n{backend}\n'
    assert_names(rejection(write(tmp_path, "c.toml", text)), path, "belong in the environment")


def test_a_secret_anywhere_in_the_file_is_rejected_first(tmp_path: Path) -> None:
    # Before the unknown-key check, so the message explains the real problem.
    text = f'token = "{CANARY}"\n' + MINIMAL
    assert_names(rejection(write(tmp_path, "c.toml", text)), "token", "belong in the environment")


def test_ordinary_values_are_not_mistaken_for_keys(tmp_path: Path) -> None:
    text = """
[[backends]]
name = "openrouter-2024-production-eu-west"
provider = "openrouter"
api_key_env = "OPENROUTER_API_KEY_PRODUCTION_2024"
models = ["meta-llama/llama-3.3-70b-instruct"]
tags = ["release-2024-01-15-candidate"]
headers = { "HTTP-Referer" = "https://example.org/apps/2024/llm-rpc", "X-Title" = "my-app-version-2024-01-15" }
"""
    (backend,) = load_config(write(tmp_path, "c.toml", text)).backends
    assert backend.headers["X-Title"] == "my-app-version-2024-01-15"


@pytest.mark.parametrize("name", ["my key", "1PASSWORD", "OPENAI-API-KEY", "${OPENAI_API_KEY}"])
def test_a_key_variable_must_be_a_valid_environment_variable_name(tmp_path: Path, name: str) -> None:
    text = f'[[backends]]\nprovider = "openai"\napi_key_env = "{name}"\n'
    error = rejection(write(tmp_path, "c.toml", text))
    assert_names(error, "backends[0].api_key_env", "not a valid environment variable name")
    assert name not in error.message


def test_a_toml_syntax_error_gives_the_line_but_not_its_text(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", f'[[backends]]\nprovider = "openai"\nnote = {CANARY}\n')
    error = rejection(path)
    assert "not valid TOML" in error.message
    assert "line 3" in error.message
    assert CANARY not in error.message


def test_a_file_that_is_not_utf8_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xff\xfe[router]\n")
    assert "UTF-8" in rejection(path).message


@pytest.mark.parametrize("name", ["c.json", "c.ini", "config"])
def test_only_toml_and_yaml_extensions_are_accepted(tmp_path: Path, name: str) -> None:
    error = rejection(write(tmp_path, name, MINIMAL))
    assert "unsupported config file type" in error.message
    assert ".toml, .yaml or .yml" in error.message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    error = rejection(tmp_path / "nope.toml")
    assert "cannot read" in error.message
    assert error.data["file"] == str(tmp_path / "nope.toml")


def test_llm_rpc_config_names_the_file_when_no_path_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "c.toml", '[[backends]]\nname = "from-env-var"\nprovider = "mock"\n')
    monkeypatch.setenv("LLM_RPC_CONFIG", str(path))
    config, source = load_config_with_source()
    assert config.backends[0].name == "from-env-var"
    assert source.file == path
    assert source.format == "toml"


# -- YAML ---------------------------------------------------------------------------------------------

YAML_CONFIG = """
router:
  strategy: failover
  retries: 2
backends:
  - name: openai-main
    provider: openai
    api_key_env: OPENAI_API_KEY
    models: ["gpt-4o*"]
    priority: 1
    headers: {X-Title: my-app}
  - provider: mock
models:
  - {name: gpt-4o, input: 2.5, output: 10}
"""

TOML_CONFIG = """
[router]
strategy = "failover"
retries = 2
[[backends]]
name = "openai-main"
provider = "openai"
api_key_env = "OPENAI_API_KEY"
models = ["gpt-4o*"]
priority = 1
headers = { X-Title = "my-app" }
[[backends]]
provider = "mock"
[[models]]
name = "gpt-4o"
input = 2.5
output = 10
"""


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_decodes_to_the_same_config_as_toml(tmp_path: Path, suffix: str) -> None:
    from_yaml, source = load_config_with_source(write(tmp_path, f"c{suffix}", YAML_CONFIG))
    assert source.format == "yaml"
    assert from_yaml == load_config(write(tmp_path, "c.toml", TOML_CONFIG))


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("backends:\n  - provider: openai\n    modles: [x]\n", "backends[0].modles", ("unknown key", "`models`")),
        ("backends:\n  - provider: openai\n    priority: high\n", "backends[0].priority", ("expected int, got str",)),
        ("backends:\n  - provider: openai\n    local: 1\n", "backends[0].local", ("expected bool, got int",)),
        (f"backends:\n  - provider: openai\n    api_key: {CANARY}\n", "backends[0].api_key", ("environment",)),
        ("- provider: mock\n", "", ("expected table, got list",)),
        ("", "backends", ("no backends",)),
    ],
)
def test_yaml_rejections_name_the_key(tmp_path: Path, text: str, path: str, words: tuple[str]) -> None:
    error = rejection(write(tmp_path, "c.yaml", text))
    assert error.data["path"] == path
    for word in words:
        assert word in error.message
    assert CANARY not in error.message


def test_a_yaml_key_given_twice_is_rejected(tmp_path: Path) -> None:
    text = "backends:\n  - provider: mock\n    models: [a]\n    models: [b]\n"
    error = rejection(write(tmp_path, "c.yaml", text))
    assert "duplicate key 'models'" in error.message
    assert "line 4" in error.message


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = "backends:\n  - <<: {provider: mock, priority: 5}\n    priority: 7\n"
    assert load_config(write(tmp_path, "c.yaml", text)).backends[0].priority == 7


def test_a_yaml_syntax_error_gives_the_line_but_not_its_text(tmp_path: Path) -> None:
    text = f"backends:\n  - provider: mock\n   note: {CANARY}\n"
    error = rejection(write(tmp_path, "c.yaml", text))
    assert "not valid YAML" in error.message
    assert "line 3" in error.message
    assert CANARY not in error.message


def test_yaml_without_pyyaml_says_which_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    error = rejection(write(tmp_path, "c.yaml", "backends: [{provider: mock}]\n"))
    assert "PyYAML" in error.message
    assert "llm-rpc[yaml]" in error.message


# -- organism.yaml --------------------------------------------------------------------------------------

ORGANISM = f"""
organism:
  name: CodingSwarm-01
  port: 8765
max_concurrent_pipelines: 50
auth:
  api_key: {CANARY}
llm:
  strategy: Round_Robin
  retries: 5
  retry_base_delay: 0.5
  retry_max_delay: 30
  backends:
    - provider: xai
      api_key_env: XAI_API_KEY
      rate_limit_tpm: 50000
    - provider: Anthropic
      name: claude
      api_key_env: ANTHROPIC_API_KEY
      priority: 2
      max_concurrent: 4
      base_url: https://api.anthropic.com
      timeout: 30
    - provider: ollama
      supported_models: [llama3.2, qwen2.5-coder]
      priority: 3
listeners:
  - name: coordinator
    handler: handlers.coding_swarm.coordinator.handle_coordinator
"""


def test_an_organism_yaml_llm_section_maps_onto_our_config(tmp_path: Path) -> None:
    config, source = load_config_with_source(write(tmp_path, "organism.yaml", ORGANISM))
    assert source.format == "organism.yaml"
    router = config.router
    assert (router.strategy, router.retries, router.retry_base_delay, router.retry_max_delay) == (
        "round-robin",
        5,
        0.5,
        30.0,
    )
    xai, claude, ollama = config.backends
    # xml-pipeline's own defaults for what the file leaves out
    assert (xai.provider, xai.backend_name, xai.priority, xai.max_concurrent) == ("xai", "xai", 1, 20)
    assert xai.rate_limit_tpm == 50000
    assert xai.key_envs == ["XAI_API_KEY"]
    assert (claude.provider, claude.backend_name, claude.priority, claude.max_concurrent) == (
        "anthropic",
        "claude",
        2,
        4,
    )
    assert claude.rate_limit_tpm == 100_000
    assert claude.base_url == "https://api.anthropic.com"
    assert claude.timeout_seconds == 30.0
    assert ollama.models == ["llama3.2", "qwen2.5-coder"]
    assert ollama.key_envs == []


@pytest.mark.parametrize(
    ("llm", "path", "words"),
    [
        ("  strategy: failover\n  budget: 5\n  backends: [{provider: xai}]\n", "llm.budget", ("unknown key",)),
        (
            "  backends:\n    - provider: ollama\n      supported_modles: [a]\n",
            "llm.backends[0].supported_modles",
            ("unknown key", "`supported_models`"),
        ),
        (
            "  backends:\n    - provider: xai\n      rate_limit_rpm: 5\n",
            "llm.backends[0].rate_limit_rpm",
            ("unknown key",),
        ),
        ("  strategy: random\n  backends: [{provider: xai}]\n", "llm.strategy", ("expected one of", "failover")),
        ("  backends:\n    - provider: xai\n      priority: high\n", "llm.backends[0].priority", ("expected int",)),
        (f"  backends:\n    - provider: xai\n      api_key: {CANARY}\n", "llm.backends[0].api_key", ("environment",)),
        (
            f"  backends:\n    - provider: xai\n      api_key_env: {CANARY}\n",
            "llm.backends[0].api_key_env",
            ("environment",),
        ),
        (
            "  backends:\n    - provider: xai\n    - provider: xai\n",
            "llm.backends[1].name",
            ("two backends are named 'xai'",),
        ),
        ("  backends: []\n", "llm.backends", ("no backends",)),
        ("  retry_base_delay: 9\n  retry_max_delay: 1\n  backends: [{provider: xai}]\n", "llm.retry_max_delay", ()),
    ],
)
def test_keys_inside_llm_are_checked_and_named_with_their_path(
    tmp_path: Path, llm: str, path: str, words: tuple[str]
) -> None:
    text = f"organism:\n  name: x\nlisteners: [{{name: a, whatever: 1}}]\nllm:\n{llm}"
    assert_names(rejection(write(tmp_path, "organism.yaml", text)), path, *words)


def test_an_empty_llm_section_is_named(tmp_path: Path) -> None:
    error = rejection(write(tmp_path, "organism.yaml", "organism: {name: x}\nllm:\n"))
    assert error.data["path"] == "llm"
    assert "expected table, got null" in error.message


# -- .env files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\nB=two words\n", {"A": "1", "B": "two words"}),
        ("export A=1\n  export   B = 2  \n", {"A": "1", "B": "2"}),
        ("# comment\n\n   # indented comment\nA=1 # trailing\n", {"A": "1"}),
        ("A=a#b\nB=a #b\nC= #c\n", {"A": "a#b", "B": "a", "C": ""}),
        ("A='x # y \\n $Z'\n", {"A": "x # y \\n $Z"}),
        ('A="x\\ny\\t\\"q\\" \\\\ \\$ \\z"\n', {"A": 'x\ny\t"q" \\ $ \\z'}),
        ('A="line 1\nline 2"\nB=3\n', {"A": "line 1\nline 2", "B": "3"}),
        ("A='one\ntwo' # c\n", {"A": "one\ntwo"}),
        ("A=\nB=''\nC=\"\"\n", {"A": "", "B": "", "C": ""}),
        ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
        ("\ufeffA=1", {"A": "1"}),
        ("A=1\nA=2\n", {"A": "2"}),
        ("A=${B}\n", {"A": "${B}"}),
        ("A=x=y\n", {"A": "x=y"}),
        ("_a1=v\n", {"_a1": "v"}),
        ("", {}),
    ],
)
def test_parse_env(text: str, expected: dict[str, str]) -> None:
    assert parse_env(text) == expected


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (f"A=1\n{CANARY}\n", 2, "expected KEY=VALUE"),
        (f"A=1\n\nexport\nB={CANARY}\n", 3, "expected KEY=VALUE"),
        (f"1A={CANARY}\n", 1, "expected KEY=VALUE"),
        (f'A=1\nB="{CANARY}\n', 2, "never closed"),
        (f"A='{CANARY}' trailing\n", 1, "after the closing quote"),
        (f'A="x\ny" {CANARY}\n', 2, "after the closing quote"),
    ],
)
def test_a_malformed_env_file_names_the_line_but_not_its_text(text: str, line: int, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^line {line}: ") as info:
        parse_env(text)
    assert reason in str(info.value)
    assert CANARY not in str(info.value)


def test_a_dotenv_beside_the_config_is_loaded_without_overriding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "c.toml", '[[backends]]\nprovider = "openai"\n')
    write(tmp_path, ".env", f"OPENAI_API_KEY={CANARY}\nALREADY=from-file\nEMPTY_SET=from-file\nNEW=from-file\n")
    monkeypatch.setenv("ALREADY", "from-env")
    monkeypatch.setenv("EMPTY_SET", "")
    _, source = load_config_with_source(path)
    assert source.env_file == tmp_path / ".env"
    assert source.env_loaded == ("OPENAI_API_KEY", "NEW")
    assert os.environ["OPENAI_API_KEY"] == CANARY
    assert os.environ["ALREADY"] == "from-env"
    assert os.environ["EMPTY_SET"] == ""
    assert os.environ["NEW"] == "from-file"


def test_an_explicit_env_file_replaces_the_one_beside_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", MINIMAL)
    write(tmp_path, ".env", "BESIDE=1\nBOTH=beside\n")
    explicit = write(tmp_path, "prod.env", "EXPLICIT=1\nBOTH=explicit\n")
    _, source = load_config_with_source(path, env_file=explicit)
    assert source.env_file == explicit
    assert os.environ["BOTH"] == "explicit"
    assert "BESIDE" not in os.environ


def test_an_env_file_may_name_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", '[[backends]]\nname = "via-env-file"\nprovider = "mock"\n')
    env = write(tmp_path, "x.env", f"LLM_RPC_CONFIG={path}\n")
    assert load_config(env_file=env).backends[0].name == "via-env-file"


def test_a_missing_explicit_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the env file"):
        load_config(tmp_path / "c.toml", env_file=tmp_path / "missing.env")


def test_a_malformed_env_file_is_a_config_error_naming_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, ".env", f"GOOD=1\nnot a line {CANARY}\n")
    error = rejection(write(tmp_path, "c.toml", MINIMAL))
    assert str(tmp_path / ".env") in error.message
    assert "line 2" in error.message
    assert CANARY not in error.message


def test_load_env_file_into_a_given_mapping(tmp_path: Path) -> None:
    env = {"KEEP": "mine"}
    names = load_env_file(write(tmp_path, "a.env", "KEEP=theirs\nADD=1\n"), env)
    assert names == ["ADD"]
    assert env == {"KEEP": "mine", "ADD": "1"}


# -- no config file ---------------------------------------------------------------------------------------


def _router(config: Config) -> Router:
    """A router over ``config`` without the real provider classes (only routing is under test)."""
    stand_ins: dict[str, Provider] = {b.backend_name: MockProvider(b.backend_name) for b in config.backends}
    return Router(config, providers=stand_ins)


def test_with_no_config_and_no_keys_the_mock_serves_every_model() -> None:
    config = load_config()
    assert [(b.provider, b.models) for b in config.backends] == [("mock", None)]
    router = Router(config)
    assert router.default_model == "mock"
    for model in ("mock", "gpt-4o", "claude-sonnet-4", "anything/at-all"):
        assert [b.name for b in router.candidates(model)] == ["mock"]


def test_with_no_config_each_provider_with_a_key_comes_before_the_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in USUAL_KEY_ENVS.values():
        monkeypatch.setenv(var, CANARY)
    config = load_config()
    assert [b.provider for b in config.backends] == ["openai", "anthropic", "gemini", "xai", "openrouter", "mock"]
    assert all(b.key_envs == [USUAL_KEY_ENVS[b.provider]] for b in config.backends if b.provider != "mock")
    assert CANARY not in repr(config)
    router = _router(config)
    assert router.default_model == "mock"

    def route(model: str) -> list[str]:
        return [b.name for b in router.candidates(model)]

    assert route("gpt-4o") == ["openai", "mock"]
    assert route("claude-haiku-4-5") == ["anthropic", "mock"]
    assert route("gemini-2.5-flash") == ["gemini", "mock"]
    assert route("grok-4") == ["xai", "mock"]
    assert route("meta-llama/llama-3.3-70b") == ["openrouter", "mock"]
    assert route("mock") == ["mock"]
    assert route("llama3") == ["mock"]


def test_with_no_config_only_the_providers_whose_key_is_set_and_not_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_API_KEY", "")
    assert [b.provider for b in load_config().backends] == ["anthropic", "mock"]
    assert [b.provider for b in default_config({"XAI_API_KEY": "x"}).backends] == ["xai", "mock"]


def test_with_no_config_an_env_file_can_supply_the_keys(tmp_path: Path) -> None:
    env = write(tmp_path, "keys.env", f"GEMINI_API_KEY={CANARY}\n")
    config, source = load_config_with_source(env_file=env)
    assert source.file is None
    assert source.format == "defaults"
    assert [b.provider for b in config.backends] == ["gemini", "mock"]


# -- the examples in contracts/config.md ---------------------------------------------------------------


def _doc_blocks(language: str) -> list[str]:
    text = (ROOT / "contracts" / "config.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_every_toml_and_yaml_example_in_the_contract_loads(tmp_path: Path) -> None:
    tomls, yamls = _doc_blocks("toml"), _doc_blocks("yaml")
    assert len(tomls) >= 1
    assert len(yamls) >= 2
    for i, block in enumerate(tomls):
        assert load_config(write(tmp_path, f"t{i}.toml", block)).backends
    formats = []
    for i, block in enumerate(yamls):
        config, source = load_config_with_source(write(tmp_path, f"y{i}.yaml", block))
        assert config.backends
        formats.append(source.format)
    assert "organism.yaml" in formats
    assert "yaml" in formats


def test_the_contracts_env_example_parses() -> None:
    (block,) = [b for b in _doc_blocks("sh") if "export ANTHROPIC_API_KEY" in b]
    values = parse_env(block)
    assert values["OPENAI_API_KEY"] == "sk-your-key-here"
    assert values["ANTHROPIC_API_KEY"] == "sk-ant-your-key"
    assert values["MULTI"] == "first line\nsecond line"
    assert values["EMPTY"] == ""


# -- llm-rpc check-config, as a real process -----------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LLM_RPC_") and k not in USUAL_KEY_ENVS.values()}
    base["PYTHONPATH"] = str(ROOT)
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "llm_rpc", *args],
        input="",
        capture_output=True,
        text=True,
        env=base,
        timeout=60,
        check=False,
    )


def assert_no_canary(done: subprocess.CompletedProcess[str]) -> None:
    assert CANARY not in done.stdout
    assert CANARY not in done.stderr


CHECKED = """
[[backends]]
name = "openai-main"
provider = "openai"
api_key_env = "OPENAI_API_KEY"
api_key_envs = ["OPENAI_API_KEY_2"]
models = ["gpt-4o*", "o3*"]
priority = 1
rate_limit_rpm = 500
rate_limit_tpm = 100000
max_concurrent = 20

[[backends]]
name = "local"
provider = "openai-compatible"
base_url = "http://127.0.0.1:8000/v1"
priority = 5

[[backends]]
provider = "mock"
priority = 1000
"""


@pytest.fixture
def checked_file(tmp_path: Path) -> Path:
    return write(tmp_path, "llm-rpc.toml", CHECKED)


def test_check_config_prints_backends_in_priority_order_with_key_states(checked_file: Path) -> None:
    done = run_cli("check-config", str(checked_file), env={"OPENAI_API_KEY": CANARY})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert f"config: {checked_file} (toml)" in out
    assert out.index("openai-main") < out.index("local:") < out.index("mock:")
    assert "provider openai, priority 1" in out
    assert "models:   gpt-4o*, o3*" in out
    assert "rpm 500, tpm 100000, concurrent 20" in out
    assert "base_url: http://127.0.0.1:8000/v1" in out
    assert "OPENAI_API_KEY set, OPENAI_API_KEY_2 missing" in out
    assert "1 key variable(s) not set" in out
    assert_no_canary(done)


def test_check_config_json_reports_each_key_as_set_or_missing(checked_file: Path) -> None:
    done = run_cli("check-config", "--json", str(checked_file), env={"OPENAI_API_KEY": CANARY})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    first = summary["backends"][0]
    assert first["name"] == "openai-main"
    assert first["keys"] == [
        {"env": "OPENAI_API_KEY", "state": "set"},
        {"env": "OPENAI_API_KEY_2", "state": "missing"},
    ]
    assert (first["priority"], first["rate_limit_rpm"], first["max_concurrent"]) == (1, 500, 20)
    assert [b["name"] for b in summary["backends"]] == ["openai-main", "local", "mock"]
    assert_no_canary(done)


def test_check_config_exits_1_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", '[[backends]]\nprovider = "openai"\nmodles = ["gpt-4o"]\n')
    done = run_cli("check-config", str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert "backends[0].modles" in done.stderr
    assert "unknown key" in done.stderr


def test_check_config_refuses_a_literal_key_without_printing_it(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", f'[[backends]]\nprovider = "openai"\napi_key = "{CANARY}"\n')
    done = run_cli("check-config", str(path), env={"OPENAI_API_KEY": CANARY})
    assert done.returncode == 1
    assert "backends[0].api_key" in done.stderr
    assert "belong in the environment" in done.stderr
    assert_no_canary(done)


def test_check_config_without_a_file_shows_the_defaults(tmp_path: Path) -> None:
    done = run_cli("check-config", env={"ANTHROPIC_API_KEY": CANARY})
    assert done.returncode == 0, done.stderr
    assert "config: none" in done.stdout
    assert done.stdout.index("anthropic:") < done.stdout.index("mock:")
    assert "ANTHROPIC_API_KEY set" in done.stdout
    assert "openai:" not in done.stdout
    assert_no_canary(done)


def test_check_config_loads_the_env_file_it_is_given(tmp_path: Path, checked_file: Path) -> None:
    env_file = write(tmp_path, "prod.env", f"OPENAI_API_KEY_2='{CANARY}'\n")
    done = run_cli("check-config", "--json", str(checked_file), "--env-file", str(env_file))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["env_loaded"] == ["OPENAI_API_KEY_2"]
    assert summary["backends"][0]["keys"][1] == {"env": "OPENAI_API_KEY_2", "state": "set"}
    assert_no_canary(done)


def test_check_config_reads_an_organism_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "organism.yaml", ORGANISM)
    done = run_cli("check-config", str(path), env={"XAI_API_KEY": CANARY})
    assert done.returncode == 0, done.stderr
    assert "(organism.yaml)" in done.stdout
    assert "XAI_API_KEY set" in done.stdout
    assert "ANTHROPIC_API_KEY missing" in done.stdout
    assert "models:   llama3.2, qwen2.5-coder" in done.stdout
    assert_no_canary(done)


# -- llm-rpc serve --env-file ----------------------------------------------------------------------------


def test_serve_loads_its_env_file_before_reading_the_auth_token_variable(tmp_path: Path) -> None:
    env_file = write(tmp_path, "serve.env", "LLM_TEST_TOKEN=t0ken-from-file\n")
    args = ("serve", "--stdio", "--auth-token-env", "LLM_TEST_TOKEN")
    without = run_cli(*args)
    assert without.returncode == 2
    assert "LLM_TEST_TOKEN" in without.stderr
    with_file = run_cli(*args, "--env-file", str(env_file))
    assert with_file.returncode == 0, with_file.stderr


def test_serve_exits_2_on_an_invalid_config_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", '[[backends]]\nprovider = "mock"\nlatency = 5\n')
    done = run_cli("serve", "--stdio", "--config", str(path))
    assert done.returncode == 2
    assert "backends[0].latency" in done.stderr
