from ssmd.cli.main import main

raise SystemExit(main())
