"""Intake workers. Each module is one worker: a pure core plus a small main()."""
