# Sourced by the scripts in scripts/ml: makes (once) the Python environment with the pinned
# packages of requirements.txt, under /var/tmp unless TENANTFLOW_ML_VENV says where, and sets
# $venv to it.
venv="${TENANTFLOW_ML_VENV:-/var/tmp/tenantflow-ml-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r scripts/ml/requirements.txt
fi
