"""`python -m sampleapp`."""

from sampleapp.main import main

raise SystemExit(main())
