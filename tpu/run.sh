#!/usr/bin/env bash
# Run one fundl command on every worker of a TPU VM or slice, in ~/fundl with ~/fundl-venv.
usage() {
  cat <<'EOF'
Usage: tpu/run.sh [--name NAME] [--zone ZONE] [--type TYPE] [--project ID] [--dry-run] -- fundl ARGS...

Run the fundl command on every worker of the TPU NAME at once, in ~/fundl (so relative paths,
such as the default run directory runs/<name>-<timestamp>, are under ~/fundl on each worker).
On a slice of several hosts (TYPE larger than 8, e.g. v4-32), `fundl run` gets --distributed:
the workers form one JAX system and process 0, on worker 0, writes the run directory.

  --name NAME    the TPU's name (default: $TPU_NAME)
  --zone ZONE    its zone (default: $TPU_ZONE)
  --type TYPE    its accelerator type, e.g. v4-8 or v4-32 (default: $TPU_TYPE)
  --project ID   Google Cloud project (default: $GCP_PROJECT, else gcloud's own setting)
  --dry-run      print the gcloud command instead of running it
  -h, --help     show this help

Example: tpu/run.sh -- fundl run mlp_digits --set train.precision=bfloat16 --out runs/digits-bf16
EOF
}
here=${BASH_SOURCE[0]%/*}; [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source=tpu/_common.sh
. "$here/_common.sh"

while (($#)); do
  if [[ $1 == -- ]]; then shift; break
  elif option --type "$@"; then TYPE=$VALUE
  elif ! common_option "$@"; then break; fi
  shift "$USED"
done
check_name_zone
check_type
(($#)) || die "missing the fundl command: e.g. $PROG -- fundl run mlp_digits"
[[ $1 == fundl ]] || die "the command must be a fundl command (fundl ARGS..., run in ~/fundl-venv), e.g. -- fundl run mlp_digits; got '$*'"
(($# > 1)) || die "missing the fundl subcommand: e.g. -- fundl run mlp_digits"
args=("$@")
if [[ $2 == run ]] && multi_host; then
  distributed=0
  for arg in "$@"; do if [[ $arg == --distributed ]]; then distributed=1; fi; done
  if ((!distributed)); then args+=(--distributed); fi
fi
need_gcloud

remote="cd ~/fundl && . ~/fundl-venv/bin/activate && $(show "${args[@]}")"
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command "$remote"
