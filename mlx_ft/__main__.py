import sys

from mlx_ft.cli import main

sys.exit(main())
