"""Checks of the deployment files (Dockerfile, deploy/): nothing here needs Docker."""
