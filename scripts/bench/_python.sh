# The Python interpreter of the benchmarks, chosen in one place (sourced by _sipp_common.sh and
# compare.sh): $PYTHON if set, else this checkout's .venv/bin/python if there is one (./scripts/test
# creates it, with trio and trio-websocket), else python3 from PATH. Sets PYTHON (not exported).
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.venv/bin/python" ]; then
        PYTHON="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.venv/bin/python"
    else
        PYTHON=python3
    fi
fi
