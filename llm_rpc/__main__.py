import sys

from llm_rpc.cli import main

sys.exit(main())
