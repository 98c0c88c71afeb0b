#!/usr/bin/env bash
# Delete a TPU VM or slice: it bills until it is deleted, even idle, and its disks go with it.
usage() {
  cat <<'EOT'
Usage: tpu/delete.sh [--name NAME] [--zone ZONE] [--project ID] [--queued] [--dry-run]

Delete the TPU NAME without asking. Everything on its disks goes with it: fetch the run
directories first (tpu/fetch.sh).

  --name NAME    the TPU's name (default: $TPU_NAME)
  --zone ZONE    its zone (default: $TPU_ZONE)
  --project ID   Google Cloud project (default: $GCP_PROJECT, else gcloud's own setting)
  --queued       it was made with tpu/create.sh --queued: delete the queued resource NAME
                 and the TPU in it
  --dry-run      print the gcloud command instead of running it
  -h, --help     show this help
EOT
}
here=${BASH_SOURCE[0]%/*}; [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source=tpu/_common.sh
. "$here/_common.sh"

QUEUED=0
while (($#)); do
  if [[ $1 == --queued ]]; then QUEUED=1 USED=1
  elif ! common_option "$@"; then die "unexpected argument '$1' (delete.sh takes options only)"; fi
  shift "$USED"
done
check_name_zone
need_gcloud

if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "$NAME" --zone="$ZONE" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
fi
