# shellcheck shell=bash disable=SC2034  # the variables set here are read by the scripts
# Shared by the scripts in tpu/ (sourced, not run): defaults, argument checks, and running or
# printing commands. Works with bash 3.2 (macOS) and later.
set -euo pipefail

PROG=tpu/${0##*/}
NAME=${TPU_NAME:-} ZONE=${TPU_ZONE:-} TYPE=${TPU_TYPE:-} PROJECT=${GCP_PROJECT:-} DRY_RUN=0

# A usage error: name the argument and the expected form, then exit 2.
die() { printf '%s: error: %s\n(see %s --help)\n' "$PROG" "$1" "$PROG" >&2; exit 2; }

# option OPT ARGS...: if ARGS start with "OPT VALUE" or "OPT=VALUE", set VALUE and USED (words taken).
option() {
  local opt=$1; shift
  case $1 in
    "$opt") [[ $# -ge 2 && -n $2 && $2 != -* ]] || die "$opt needs a value, e.g. $opt $(example "$opt")"
            VALUE=$2 USED=2 ;;
    "$opt"=*) VALUE=${1#*=} USED=1 ;;
    *) return 1 ;;
  esac
}
example() { case $1 in --name) echo fundl-tpu ;; --zone) echo us-central2-b ;; --type) echo v4-8 ;; *) echo VALUE ;; esac; }

# common_option ARGS...: the options every script takes; fails (status 1) on a positional argument.
common_option() {
  USED=1
  if option --name "$@"; then NAME=$VALUE
  elif option --zone "$@"; then ZONE=$VALUE
  elif option --project "$@"; then PROJECT=$VALUE
  elif [[ $1 == --dry-run ]]; then DRY_RUN=1
  elif [[ $1 == -h || $1 == --help ]]; then usage; exit 0
  elif [[ $1 == -* ]]; then die "unknown option '$1'"
  else return 1; fi
}

check_name_zone() {
  [[ -n $NAME ]] || die "missing the TPU name: give --name NAME or set TPU_NAME"
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name: expected lowercase letters, digits and dashes, starting with a letter (e.g. fundl-tpu); got '$NAME'"
  [[ -n $ZONE ]] || die "missing the zone: give --zone ZONE (e.g. us-central2-b) or set TPU_ZONE"
  [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone: expected a zone like us-central2-b or europe-west4-a; got '$ZONE'"
  [[ -z $PROJECT || $PROJECT =~ ^[a-z][-a-z0-9.:]*[a-z0-9]$ ]] ||
    die "--project: expected a project ID like my-project-123; got '$PROJECT'"
}

# check_type: validate TYPE (GENERATION-SIZE) and set GENERATION and SIZE.
check_type() {
  [[ -n $TYPE ]] || die "missing the accelerator type: give --type TYPE (e.g. v4-8, v5litepod-8, v6e-8) or set TPU_TYPE"
  [[ $TYPE != v5e-* ]] || die "--type: TPU v5e is written v5litepod-SIZE (e.g. v5litepod-8); got '$TYPE'"
  [[ $TYPE =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$ ]] ||
    die "--type: expected GENERATION-SIZE, GENERATION one of v2 v3 v4 v5p v5litepod v6e (e.g. v4-8, v4-32, v5litepod-16, v6e-8); got '$TYPE'"
  GENERATION=${BASH_REMATCH[1]} SIZE=${BASH_REMATCH[2]}
}
# Every generation puts at most 8 (cores or chips) on one host: larger slices have several workers.
multi_host() { ((SIZE > 8)); }

# quote WORD: WORD as a shell reads it back: bare if plain; in single quotes, or in double quotes
# when it holds single quotes (and no "!", which an interactive shell expands there).
quote() {
  local s=$1
  if [[ $s =~ ^[-A-Za-z0-9_@%+=:,./]+$ ]]; then printf '%s' "$s"
  elif [[ $s != *\'* || $s == *!* ]]; then printf "'%s'" "${s//\'/\'\\\'\'}"
  else s=${s//\\/\\\\} s=${s//\"/\\\"} s=${s//\$/\\\$} s=${s//\`/\\\`}; printf '"%s"' "$s"; fi
}
show() { local line="" word; for word in "$@"; do line+="${line:+ }$(quote "$word")"; done; printf '%s\n' "$line"; }

# run COMMAND...: with --dry-run print it (one line, quoted); otherwise echo it to stderr and run it.
# gcloud commands get --project when one is set.
run() {
  local cmd=("$@")
  if [[ $1 == gcloud && -n $PROJECT ]]; then cmd+=("--project=$PROJECT"); fi
  if ((DRY_RUN)); then show "${cmd[@]}"; else printf '+ %s\n' "$(show "${cmd[@]}")" >&2; "${cmd[@]}"; fi
}

need_gcloud() {
  ((DRY_RUN)) || command -v gcloud >/dev/null 2>&1 || {
    printf '%s: error: gcloud is not installed or not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), or add --dry-run to print the commands\n' "$PROG" >&2
    exit 127
  }
}
