import sys

from llm_auction.cli import main

sys.exit(main())
