import sys

from lotto.cli import main

sys.exit(main())
