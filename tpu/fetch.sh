#!/usr/bin/env bash
# Copy a run directory back from worker 0 of a TPU VM or slice (only process 0 writes it).
usage() {
  cat <<'EOF'
Usage: tpu/fetch.sh [--name NAME] [--zone ZONE] [--project ID] [--dry-run] RUN_DIR [LOCAL_DIR]

Copy RUN_DIR from worker 0 of the TPU NAME into LOCAL_DIR (default: the current folder),
as scp -r does: an existing LOCAL_DIR receives RUN_DIR's last component.

  RUN_DIR        the run directory as fundl printed it: relative to ~/fundl, where tpu/run.sh
                 runs fundl (e.g. runs/mlp_digits-20260101-120000), or absolute
  --name NAME    the TPU's name (default: $TPU_NAME)
  --zone ZONE    its zone (default: $TPU_ZONE)
  --project ID   Google Cloud project (default: $GCP_PROJECT, else gcloud's own setting)
  --dry-run      print the gcloud command instead of running it
  -h, --help     show this help
EOF
}
here=${BASH_SOURCE[0]%/*}; [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source=tpu/_common.sh
. "$here/_common.sh"

positional=()
while (($#)); do
  if [[ $1 == -- ]]; then shift; positional+=("$@"); break
  elif ! common_option "$@"; then positional+=("$1") USED=1; fi
  shift "$USED"
done
check_name_zone
((${#positional[@]} >= 1)) || die "missing RUN_DIR: the run directory on worker 0, e.g. runs/mlp_digits-20260101-120000"
((${#positional[@]} <= 2)) || die "too many arguments: expected RUN_DIR [LOCAL_DIR]; got ${positional[*]}"
run_dir=${positional[0]} local_dir=${positional[1]:-.}
[[ $run_dir =~ ^[-A-Za-z0-9_.+=@,/]+$ ]] ||
  die "RUN_DIR: expected a path of letters, digits and -_.+=@,/, relative to ~/fundl or absolute (as fundl prints it); got '$run_dir'"
run_dir=${run_dir%/}
[[ $run_dir == /* ]] || run_dir=fundl/$run_dir
need_gcloud

run gcloud compute tpus tpu-vm scp "$NAME:$run_dir" "$local_dir" --zone="$ZONE" --worker=0 --recurse
