#!/usr/bin/env bash
# Create a Cloud TPU VM (one host, e.g. v4-8) or pod slice (several hosts, e.g. v4-32) for fundl.
usage() {
  cat <<'EOF'
Usage: tpu/create.sh [--name NAME] [--zone ZONE] [--type TYPE] [--project ID]
                     [--version VERSION] [--spot] [--queued] [--dry-run]

Create the TPU VM or slice NAME in ZONE.

  --name NAME        the TPU's name (default: $TPU_NAME)
  --zone ZONE        e.g. us-central2-b (default: $TPU_ZONE)
  --type TYPE        accelerator type (default: $TPU_TYPE): one host for v4-8, v5p-8,
                     v5litepod-1/4/8, v6e-1/4/8; several for larger sizes (v4-32, v5litepod-16)
  --project ID       Google Cloud project (default: $GCP_PROJECT, else gcloud's own setting)
  --version VERSION  TPU software version (default from the type: v2, v3, v4: tpu-ubuntu2204-base;
                     v5litepod: v2-alpha-tpuv5-lite; v5p: v2-alpha-tpuv5; v6e: v2-alpha-tpuv6e)
  --spot             a Spot VM: much cheaper, but it can be preempted at any time
  --queued           ask through a queued resource, which waits for capacity instead of failing
  --dry-run          print the gcloud command instead of running it
  -h, --help         show this help
EOF
}
here=${BASH_SOURCE[0]%/*}; [[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source=tpu/_common.sh
. "$here/_common.sh"

VERSION="" SPOT=0 QUEUED=0
while (($#)); do
  if option --type "$@"; then TYPE=$VALUE
  elif option --version "$@"; then VERSION=$VALUE
  elif [[ $1 == --spot ]]; then SPOT=1 USED=1
  elif [[ $1 == --queued ]]; then QUEUED=1 USED=1
  elif ! common_option "$@"; then die "unexpected argument '$1' (create.sh takes options only)"; fi
  shift "$USED"
done
check_name_zone
check_type
if [[ -z $VERSION ]]; then
  case $GENERATION in
    v5litepod) VERSION=v2-alpha-tpuv5-lite ;; v5p) VERSION=v2-alpha-tpuv5 ;;
    v6e) VERSION=v2-alpha-tpuv6e ;; *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi
[[ $VERSION =~ ^[a-z0-9][-a-z0-9.]*$ ]] || die "--version: expected a TPU software version like tpu-ubuntu2204-base; got '$VERSION'"
need_gcloud

if ((QUEUED)); then
  cmd=(gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE"
       --accelerator-type="$TYPE" --runtime-version="$VERSION")
else
  cmd=(gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$TYPE" --version="$VERSION")
fi
if ((SPOT)); then cmd+=(--spot); fi
run "${cmd[@]}"
if ((QUEUED && !DRY_RUN)); then
  echo "queued: it is ready when 'gcloud compute tpus queued-resources describe $NAME --zone=$ZONE' says ACTIVE" >&2
fi
