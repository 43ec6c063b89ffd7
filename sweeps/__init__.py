"""sweeps: the orchestrator. Turns sweep and search specs into Configs, runs them locally or on
many workers, and builds tables and plots from MLflow. The trainer (mixmatch_core) never
imports from here, and nothing here imports the command line (mixmatch_cli), which calls it."""
