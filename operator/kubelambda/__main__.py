from kubelambda.cli import main

raise SystemExit(main())
