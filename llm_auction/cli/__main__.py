import sys

from llm_auction.cli import main

# The guard is required: vLLM starts its engine core by spawn, which re-imports this module.
if __name__ == "__main__":
    sys.exit(main())
