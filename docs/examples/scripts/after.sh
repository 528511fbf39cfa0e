#!/bin/bash
# Runs on the host once the new snapshot is live: start the app again.
set -euo pipefail
systemctl daemon-reload
systemctl start example-app
