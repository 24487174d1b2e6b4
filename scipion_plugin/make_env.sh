#!/usr/bin/env bash
# Create or update the Scipion virtualenv used to test the pupick Scipion plugin:
# scipion-pyworkflow + scipion-em (pinned) + this plugin (editable). The checks use unittest, as Scipion does.
#
#   scipion_plugin/make_env.sh [VENV]        (default VENV: .venv-scipion next to scipion_plugin/)
#
# Idempotent: when VENV already holds what this script and the plugin's pyproject.toml ask for, it returns
# at once. Environment: PYTHON (interpreter for the venv, default python3), PYWORKFLOW_SPEC, SCIPION_EM_SPEC.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${1:-$root/.venv-scipion}"
python="${PYTHON:-python3}"
pyworkflow_spec="${PYWORKFLOW_SPEC:-scipion-pyworkflow==3.11.7}"
scipion_em_spec="${SCIPION_EM_SPEC:-scipion-em==3.11.1}"

fail() { echo "make_env.sh: $*" >&2; exit 1; }

want="$(cat "$here/make_env.sh" "$here/pyproject.toml" | sha256sum | cut -d' ' -f1) $pyworkflow_spec $scipion_em_spec"
stamp="$venv/.pupick-scipion-env"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

mkdir -p "$venv"
exec 9>"$venv/.lock"
flock 9  # two callers at once: the second waits, then finds the work done
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
rm -f "$stamp"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "make_env.sh: creating $venv" >&2
    "$python" -m venv "$venv" || fail "cannot create a virtualenv with $python"
fi

echo "make_env.sh: installing $pyworkflow_spec, $scipion_em_spec and the pupick plugin into $venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "$pyworkflow_spec" "$scipion_em_spec" \
    || fail "pip could not install $pyworkflow_spec $scipion_em_spec (is PyPI reachable?)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$here" \
    || fail "pip could not install the plugin from $here"

# The plugin must be visible to Scipion through its entry point, and must not have pulled torch.
"$venv/bin/python" - <<'EOF' || fail "the installed environment is not usable (see above)"
import importlib.metadata as md
names = [ep.name for ep in md.entry_points(group='pyworkflow.plugin')]
assert 'pupick_scipion' in names, 'entry point pupick_scipion missing from group pyworkflow.plugin: %s' % names
try:
    md.distribution('torch')
except md.PackageNotFoundError:
    pass
else:
    raise SystemExit('torch was installed into the Scipion environment')
EOF

echo "$want" > "$stamp"
echo "make_env.sh: $venv ready" >&2
