from eventindex.cli import main

raise SystemExit(main())
