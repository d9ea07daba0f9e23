import sys

from scratchllm.cli.main import main

sys.exit(main())
