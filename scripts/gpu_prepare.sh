#!/usr/bin/env bash
# Before a GPU window, on this machine (the wheels need the package registry): what
# scripts/gpu_window.sh expects beside the checkout. `.whl/` gets the packages the device
# image lacks (ml-collections and tensorboardX, at requirements-lock.txt's versions) and
# `.devdata/` the data sets the batches read, copied from $RNNREG_DATA_DIR (default
# ../shared/data) in its layout. Both stay out of git (.git/info/exclude); name them in
# the `run` call's `carry` (a call carries 64 MiB at most: the sizes are printed).
#
#   bash scripts/gpu_prepare.sh ptb_word            # the word-level batches (1-4)
#   bash scripts/gpu_prepare.sh ptb_char mnist      # character level and pMNIST (5, 6)
#   GPU_PREPARE_WHEELS=0 bash scripts/gpu_prepare.sh ptb_word   # the data alone
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -eq 0 ]]; then
  echo "usage: bash scripts/gpu_prepare.sh DATASET... (folders of the data dir: ptb_word," \
       "ptb_char, mnist, cornell_scale_v1.0, imdb)" >&2
  exit 2
fi
DATA="${RNNREG_DATA_DIR:-../shared/data}"
for name in "$@"; do  # check every name before copying anything
  if [[ ! -d "$DATA/$name" ]]; then
    echo "error: no data set $name in $DATA (set RNNREG_DATA_DIR to the data dir)." >&2
    exit 2
  fi
done

exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
for path in /.whl/ /.devdata/; do
  grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >>"$exclude"
done

if [[ "${GPU_PREPARE_WHEELS:-1}" != 0 ]]; then
  pins=()
  for package in ml-collections tensorboardx; do
    pin="$(grep -io "^$package==[^ ]*" requirements-lock.txt || true)"
    [[ -n "$pin" ]] || { echo "error: requirements-lock.txt pins no $package." >&2; exit 2; }
    pins+=("$pin")
  done
  rm -rf .whl
  # Both are pure Python: any platform tag matches; the image's python3 is 3.12.
  "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
fi

mkdir -p .devdata
for name in "$@"; do
  rm -rf ".devdata/$name"
  cp -R "$DATA/$name" ".devdata/$name"
done
carry=(.devdata)
[[ -d .whl ]] && carry=(.whl .devdata)
du -sh "${carry[@]}"
echo "carry: [$(printf '"%s", ' "${carry[@]}" | sed 's/, $//')]"

# A call copies the working tree (tracked files and untracked ones git does not ignore)
# with the carried paths, 64 MiB in all (GPU_CALL_LIMIT_BYTES); a bundle brought back to
# resume from travels inside what is left.
limit="${GPU_CALL_LIMIT_BYTES:-67108864}"
tree="$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')"
carried="$(find "${carry[@]}" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
total=$((tree + carried))
echo "a call carries $total bytes (working tree $tree, carry $carried) of $limit;" \
     "room left for a resume bundle: $((limit - total)) bytes"
if ((total > limit)); then
  echo "error: the working tree and the carried data ($total bytes) exceed what a device" \
       "call carries ($limit bytes); prepare fewer data sets or shrink the tree." >&2
  exit 1
fi
