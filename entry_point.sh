#!/usr/bin/env sh
# Run EventIndex in one of its two modes: a thin wrapper over `eventindex serve`.
#   ./entry_point.sh development [serve options]   auto-reload, debug logs, open, one worker
#   ./entry_point.sh production  [serve options]   workers, authentication, JSON logs, TLS if set
set -eu
cd "$(dirname "$0")"
eventindex=eventindex
[ -x .venv/bin/eventindex ] && eventindex=.venv/bin/eventindex
mode=${1:-}
[ $# -gt 0 ] && shift
case "$mode" in
    development)
        export EVENTINDEX_MODE=development
        export EVENTINDEX_LOG_LEVEL="${EVENTINDEX_LOG_LEVEL:-debug}"
        exec "$eventindex" serve --migrate --reload "$@"
        ;;
    production)
        export EVENTINDEX_MODE=production
        exec "$eventindex" serve "$@"
        ;;
    *)
        echo "usage: entry_point.sh development|production [serve options]" >&2
        exit 2
        ;;
esac
