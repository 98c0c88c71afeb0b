#!/usr/bin/env bash
# Install Python >= 3.11, jax[tpu] and fundl on every worker of a TPU VM or slice.
usage() {
  cat <<'EOF'
Usage: tpu/setup.sh [--name NAME] [--zone ZONE] [--project ID] [--source DIR | --repo URL] [--dry-run]

On every worker of the TPU NAME: put fundl in ~/fundl, install Python 3.11 if the system's
is older, and make the venv ~/fundl-venv with jax[tpu] and fundl (editable). Run it again
after changing the code: it copies the code again and reinstalls.

  --name NAME    the TPU's name (default: $TPU_NAME)
  --zone ZONE    its zone (default: $TPU_ZONE)
  --project ID   Google Cloud project (default: $GCP_PROJECT, else gcloud's own setting)
  --source DIR   copy this fundl checkout, as it is on disk, without .git, .venv and runs/
                 (default: the checkout that holds this script)
  --repo URL     git clone URL on the workers instead (git pull when already cloned)
  --dry-run      print the commands instead of running them
  -h, --help     show this help
EOF
}
here=${BASH_SOURCE[0]%/*}; [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source=tpu/_common.sh
. "$here/_common.sh"

SOURCE="" REPO=""
while (($#)); do
  if option --source "$@"; then SOURCE=$VALUE
  elif option --repo "$@"; then REPO=$VALUE
  elif ! common_option "$@"; then die "unexpected argument '$1' (setup.sh takes options only)"; fi
  shift "$USED"
done
check_name_zone
[[ -z $SOURCE || -z $REPO ]] || die "--source and --repo exclude each other: give one"
if [[ -n $REPO ]]; then
  [[ $REPO =~ ^(https://|http://|ssh://|git://|file://|[-A-Za-z0-9_.]+@[-A-Za-z0-9_.]+:)[^[:space:]]+$ ]] ||
    die "--repo: expected a git URL like https://github.com/OWNER/fundl.git or git@HOST:OWNER/fundl.git; got '$REPO'"
  fetch_code="if [ -d ~/fundl/.git ]; then git -C ~/fundl pull --ff-only; else git clone $(quote "$REPO") ~/fundl; fi"
else
  SOURCE=${SOURCE:-$(cd "$here/.." && pwd)}
  [[ -f $SOURCE/pyproject.toml && -d $SOURCE/fundl ]] ||
    die "--source: expected a fundl checkout (a folder with pyproject.toml and fundl/); got '$SOURCE'"
  SOURCE=$(cd "$SOURCE" && pwd)
  tmp=${TMPDIR:-/tmp}; tarball=${tmp%/}/fundl-src-$NAME.tar.gz
  fetch_code="mkdir -p ~/fundl && tar -xzf ~/fundl-src.tar.gz -C ~/fundl && rm ~/fundl-src.tar.gz"
fi
apt="sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"
remote="set -e; $fetch_code; PY=python3; \$PY -c \"import sys; sys.exit(sys.version_info < (3, 11))\" || PY=python3.11;"
remote+=" \$PY -c \"import ensurepip\" 2>/dev/null || { $apt update -qq && $apt install -y -qq \$PY \$PY-venv; };"
remote+=" [ -x ~/fundl-venv/bin/python ] || \$PY -m venv ~/fundl-venv; ~/fundl-venv/bin/pip install -q -U pip;"
remote+=" ~/fundl-venv/bin/pip install -q -U \"jax[tpu]\" -e ~/fundl;"
remote+=" ~/fundl-venv/bin/python -c \"import fundl, jax; print(jax.__version__)\"; echo \"fundl ready on \$(hostname)\""
need_gcloud

if [[ -z $REPO ]]; then
  run tar -czf "$tarball" --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=__pycache__ \
    --exclude='*.egg-info' -C "$SOURCE" .
  run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:fundl-src.tar.gz" --zone="$ZONE" --worker=all
fi
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command "$remote"
