from p2bot_utils.cli import main

raise SystemExit(main())
