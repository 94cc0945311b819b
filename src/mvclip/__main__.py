"""`python -m mvclip <command>`."""
from mvclip.cli import main

raise SystemExit(main())
