from ssmd.cli.entry import main

raise SystemExit(main())
