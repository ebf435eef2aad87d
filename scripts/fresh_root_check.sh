#!/usr/bin/env bash
# Proves that the README's two commands work on a fresh Debian 12 (bookworm) machine whose npm registry is
# unreachable: it makes a minimal Debian 12 root with debootstrap, puts a clean clone of the repository's
# committed HEAD into it (uncommitted changes are NOT tested), and runs, as root inside that root (chroot):
#   1. the main job:  the first README line indented 4 spaces that contains scripts/setup.sh
#   2. the tests:     the second such line
# Each must exit 0, and the main job's `build/moep run` must print generated text on stdout. At the end it
# prints a summary: the commit, the commands, their exit codes and durations, which tests were skipped and why,
# and ctest's "tests passed" line.
#
# Usage: scripts/fresh_root_check.sh [--root DIR] [--keep] [--only-main]
#   --root DIR     where to make the fresh root (default /var/tmp/moep-fresh-root); deleted first if present
#   --keep         keep the root at the end (unmounted); by default it is removed
#   --only-main    run command 1 only, not the tests
#   --refresh-base debootstrap anew even if the cached pristine base tarball exists
#   --command CMD  (development) run CMD instead of the two README commands, e.g. "scripts/setup.sh --no-build"
#
# Needs: root, Debian's mirror (http://deb.debian.org/debian and .../debian-security) reachable, and about 5 GB
# free under the root's parent. Installs debootstrap with apt-get when missing.
#
# How the fresh machine is simulated:
#   - The root is a pristine `debootstrap --variant=minbase bookworm` (cached as a tarball, MOEP_BASE_TAR,
#     default /var/tmp/moep-bookworm-base.tar, unpacked afresh for every run), with apt sources for bookworm,
#     bookworm-updates and bookworm-security, the host's /etc/resolv.conf, and /proc, /sys, /dev, /dev/pts
#     bind-mounted (plus a fresh tmpfs on /dev/shm); everything is unmounted on exit, also on failure.
#   - npm's registry is unreachable: npm_config_registry=NPM_CONFIG_REGISTRY=http://127.0.0.1:9/ (connection
#     refused), and registry.npmjs.org / registry.yarnpkg.com resolve to 127.0.0.1 in the root's /etc/hosts (so
#     the "resolved" URLs of a package-lock.json cannot reach the real registry either). Checked before running.
#   - The commands run with a clean environment (env -i: HOME=/root, a standard PATH, TERM=dumb and the npm
#     settings above); in particular CI is not set, as on a user's machine. stdin is /dev/null.
# Logs: <DIR>-logs/<timestamp>/ (main.log, test.log, run.stdout, ...), kept after the root is removed.
set -euo pipefail

# ---------------------------------------------------------------------------------------------------- options
root_dir=/var/tmp/moep-fresh-root
keep=0
only_main=0
refresh_base=0
custom_command=""
base_tar="${MOEP_BASE_TAR:-/var/tmp/moep-bookworm-base.tar}"
mirror=http://deb.debian.org/debian
security_mirror=http://deb.debian.org/debian-security
suite=bookworm
npm_registry=http://127.0.0.1:9/

usage() { sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "fresh_root_check: error: $*" >&2; exit 1; }
say() { echo "fresh_root_check: $*"; }

orig_args="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; root_dir="$2"; shift 2 ;;
    --root=*) root_dir="${1#--root=}"; shift ;;
    --keep) keep=1; shift ;;
    --only-main) only_main=1; shift ;;
    --refresh-base) refresh_base=1; shift ;;
    --command) [ $# -ge 2 ] || die "--command needs a command"; custom_command="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (it runs debootstrap, mount and chroot): sudo $0 $orig_args"

# The root is deleted with rm -rf: insist on a plain absolute path that is not / or a top-level directory.
case "$root_dir" in /*) ;; *) root_dir="$PWD/$root_dir" ;; esac
root_dir="$(realpath -m "$root_dir")"
[[ "$root_dir" =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "--root: use a plain absolute path (letters, digits, . _ - + /): $root_dir"
[[ "$root_dir" =~ ^/[^/]+/[^/]+ ]] || die "--root: refusing a top-level directory: $root_dir"
marker="$root_dir/.moep-fresh-root"

script_dir="$(cd "$(dirname "$0")" && pwd)"
src_repo="$(git -C "$script_dir/.." rev-parse --show-toplevel)"
commit="$(git -C "$src_repo" rev-parse HEAD)"
commit_line="$(git -C "$src_repo" log -1 --format='%h %s' HEAD | cut -c1-100)"

# ---------------------------------------------------------------------------------- the commands, from README
if [ -n "$custom_command" ]; then
  commands=("$custom_command")
  names=(custom)
  say "development mode: running --command instead of the README's commands"
else
  mapfile -t readme_cmds < <(git -C "$src_repo" show HEAD:README.md | grep -E '^    .*scripts/setup\.sh' | head -n 2 | sed 's/^    //')
  [ ${#readme_cmds[@]} -eq 2 ] || die "README.md (at HEAD) has fewer than two 4-space-indented lines with scripts/setup.sh"
  if [ "$only_main" = 1 ]; then
    commands=("${readme_cmds[0]}"); names=(main)
  else
    commands=("${readme_cmds[0]}" "${readme_cmds[1]}"); names=(main test)
  fi
fi

logs="${root_dir}-logs/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$logs"

# One run per root at a time.
exec 9>"${root_dir}.lock"
flock -n 9 || die "another fresh_root_check is using $root_dir (lock ${root_dir}.lock)"

# ---------------------------------------------------------------------------- mounts, processes and cleanup
mounted=()          # what this run mounted, in order
made_root=0         # whether $root_dir is ours to remove

mounts_under_root() {   # mount points at or under $root_dir, deepest first
  awk -v r="$root_dir" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | LC_ALL=C sort -r -u
}

kill_root_processes() {  # processes running inside the root (started by the commands): TERM, then KILL
  local sig pid pids
  for sig in TERM KILL; do
    pids=()
    for pid in /proc/[0-9]*; do
      pid="${pid#/proc/}"
      [ "$pid" = "$$" ] && continue
      [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root_dir" ] && pids+=("$pid")
    done
    [ ${#pids[@]} -eq 0 ] && return 0
    say "stopping ${#pids[@]} process(es) left inside the root (SIG$sig): ${pids[*]}"
    kill -s "$sig" "${pids[@]}" 2>/dev/null || true
    sleep 2
  done
}

unmount_all() {  # returns non-zero if something under $root_dir is still mounted
  local i m
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    m="${mounted[$i]}"
    if mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; fi
  done
  mounted=()
  # Anything else under the root (mounted by the commands, or left by an interrupted earlier run; a few passes
  # for mounts stacked on one another).
  for i in 1 2 3 4 5; do
    [ -z "$(mounts_under_root)" ] && break
    for m in $(mounts_under_root); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  [ -z "$(mounts_under_root)" ]
}

remove_root() {
  [ -e "$root_dir" ] || return 0
  unmount_all || die "still mounted under $root_dir: $(mounts_under_root | tr '\n' ' '); not removing it"
  rm -rf --one-file-system "$root_dir"
}

exec 7>&1 8>&2   # the script's own stdout/stderr, for cleanup (a trap can run while they point at a dead tee)
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  trap '' PIPE
  exec 1>&7 2>&8
  kill_root_processes
  if ! unmount_all; then
    echo "fresh_root_check: error: could not unmount: $(mounts_under_root | tr '\n' ' ')" >&2
    rc=1
  elif [ "$made_root" = 1 ]; then
    if [ "$keep" = 1 ]; then
      say "kept the root, unmounted: $root_dir (to enter: bind-mount /proc /sys /dev into it, then chroot $root_dir)"
    else
      rm -rf --one-file-system "$root_dir" && say "removed the root $root_dir"
    fi
  fi
  say "logs: $logs"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mount_into_root() {  # mount_into_root ARGS... TARGET  (TARGET last)
  local target="${*: -1}"
  mkdir -p "$target"
  mount "$@"
  mounted+=("$target")
}

fmt_duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ------------------------------------------------------------------------------------------- debootstrap
if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

if [ -e "$root_dir" ]; then
  if [ -f "$marker" ] || [ -z "$(ls -A "$root_dir")" ]; then
    say "removing the previous root $root_dir"
    remove_root
  else
    die "$root_dir exists and was not made by this script (no $marker); remove it yourself or pick another --root"
  fi
fi
mkdir -p "$root_dir"
made_root=1
touch "$marker"

t0=$SECONDS
if [ -f "$base_tar" ] && [ "$refresh_base" = 0 ]; then
  say "unpacking the pristine base $base_tar into $root_dir"
  tar -xpf "$base_tar" --numeric-owner --xattrs -C "$root_dir"
  base_how="unpacked from the cached base $base_tar"
else
  say "debootstrap --variant=minbase $suite $root_dir $mirror"
  debootstrap --variant=minbase "$suite" "$root_dir" "$mirror" > "$logs/debootstrap.log" 2>&1 \
    || { tail -n 30 "$logs/debootstrap.log" >&2; die "debootstrap failed (log: $logs/debootstrap.log)"; }
  # Cache it pristine (before anything below touches it); written aside and renamed so it is never partial.
  tar -cpf "$base_tar.tmp.$$" --numeric-owner --xattrs --exclude=./.moep-fresh-root -C "$root_dir" .
  mv -f "$base_tar.tmp.$$" "$base_tar"
  base_how="debootstrapped (cached as $base_tar)"
fi
base_secs=$((SECONDS - t0))
say "fresh root ready in $(fmt_duration $base_secs): $base_how"
[ "$(cut -d. -f1 "$root_dir/etc/debian_version")" = 12 ] || die "the root is not Debian 12: $(cat "$root_dir/etc/debian_version")"

# ------------------------------------------------------------------------------------------ configure the root
# apt sources like a Debian 12 install (and this host): bookworm, bookworm-updates, bookworm-security.
rm -f "$root_dir/etc/apt/sources.list"
mkdir -p "$root_dir/etc/apt/sources.list.d"
cat > "$root_dir/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp --remove-destination /etc/resolv.conf "$root_dir/etc/resolv.conf"
# debootstrap writes no /etc/hosts (so not even localhost resolves); a Debian 12 install has this one. The
# chroot shares the host's hostname (same UTS namespace).
if [ ! -s "$root_dir/etc/hosts" ]; then
  cat > "$root_dir/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$(hostname)
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF
fi
cat >> "$root_dir/etc/hosts" <<EOF
# fresh_root_check.sh: the npm registry is unreachable on this machine
127.0.0.1 registry.npmjs.org registry.yarnpkg.com
EOF

mount_into_root --bind /proc "$root_dir/proc"
mount_into_root --bind /sys "$root_dir/sys"
mount_into_root --bind /dev "$root_dir/dev"
mount_into_root --bind /dev/pts "$root_dir/dev/pts"
mount_into_root -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root_dir/dev/shm"

# -------------------------------------------------------------------------------- the repository, committed
if [ -n "$(git -C "$src_repo" status --porcelain --untracked-files=no)" ]; then
  say "note: $src_repo has uncommitted changes; they are NOT part of this check (it tests HEAD)"
fi
mkdir -p "$root_dir/src"
git -c safe.directory="$src_repo" -c safe.directory="$src_repo/.git" \
  clone -q --no-local --no-hardlinks "$src_repo" "$root_dir/src/moep"
git -C "$root_dir/src/moep" checkout -q --detach "$commit"
say "cloned $src_repo at $commit_line into $root_dir/src/moep"

# ------------------------------------------------------------------------------------------- running inside
chroot_env=(
  HOME=/root
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  TERM=dumb
  npm_config_registry="$npm_registry"
  NPM_CONFIG_REGISTRY="$npm_registry"
)
in_root() {  # in_root SCRIPT: runs SCRIPT with bash -lc as root inside the root, clean environment
  chroot "$root_dir" /usr/bin/env -i "${chroot_env[@]}" /bin/bash -lc "$1" </dev/null 7>&- 8>&- 9>&-
}

# Preflight: the environment is clean and npm's registry is unreachable.
say "npm is made unreachable by npm_config_registry=NPM_CONFIG_REGISTRY=$npm_registry (connection refused)"
say "  and by registry.npmjs.org, registry.yarnpkg.com -> 127.0.0.1 in the root's /etc/hosts"
in_root '[ -z "${CI+x}" ]' || die "CI is set inside the root"
in_root 'set -e; h=$(getent hosts registry.npmjs.org | cut -d" " -f1); [ "$h" = 127.0.0.1 ]' \
  || die "registry.npmjs.org does not resolve to 127.0.0.1 inside the root"
for target in "127.0.0.1/9" "registry.npmjs.org/443" "registry.npmjs.org/80"; do
  if in_root "timeout 10 bash -c 'exec 3<>/dev/tcp/$target' 2>/dev/null"; then
    die "a connection to ${target%/*}:${target#*/} succeeds inside the root: npm would not be unreachable"
  fi
done
say "preflight: connections to 127.0.0.1:9 and registry.npmjs.org:443/80 are refused inside the root; CI is unset"
in_root 'grep -q "^12" /etc/debian_version && getent hosts localhost >/dev/null' || die "chroot does not work (or localhost does not resolve in it)"

run_stdout=/var/tmp/moep-check-run.stdout   # inside the root: stdout of the main job's `build/moep run`
rcs=(); secs=(); notes=()
for i in "${!commands[@]}"; do
  cmd="${commands[$i]}"; name="${names[$i]}"
  inner="set -o pipefail; cd /src/moep && $cmd"
  # When the command ends with `&& build/moep run ...` (the main job), capture that step's stdout, the
  # generated text, separately. It is the same command: `A && B && C` runs as `{ A && B; } && { C; } | tee FILE`
  # with pipefail.
  last="${cmd##* && }"; prefix="${cmd% && *}"; captured=0
  if [ "$last" != "$cmd" ] && [[ "$last" =~ ^build/moep\ run(\ |$) ]]; then
    inner="set -o pipefail; rm -f $run_stdout; cd /src/moep && { $prefix; } && { $last; } | tee $run_stdout"
    captured=1
  fi
  echo
  say "=== command $((i + 1)) ($name), inside the root, as root, in /src/moep:"
  say "    $cmd"
  say "    (log: $logs/$name.log)"
  t0=$SECONDS
  # Not `in_root ... | tee`: that would wait for every process the command left running in the background
  # (they hold the pipe). The command is over when its shell exits; what it left is stopped, then tee ends.
  set +e
  in_root "$inner" > >(tee "$logs/$name.log") 2>&1
  rc=$?
  tee_pid=$!
  set -e
  rcs+=("$rc"); secs+=($((SECONDS - t0)))
  kill_root_processes
  wait "$tee_pid" 2>/dev/null || true
  say "=== command $((i + 1)) ($name) exited $rc after $(fmt_duration "${secs[$i]}")"
  if [ "$rc" = 0 ]; then
    if [ "$captured" = 1 ]; then
      cp "$root_dir$run_stdout" "$logs/run.stdout" 2>/dev/null || : > "$logs/run.stdout"
      if ! grep -q '[^[:space:]]' "$logs/run.stdout"; then
        say "FAIL: \`build/moep run\` exited 0 but printed no text on stdout"
        rcs[$i]=1; notes[$i]=" (the command exited 0, but build/moep run printed no text)"
      fi
    elif [ "$name" = main ] && ! grep -q '[^[:space:]]' "$logs/$name.log"; then
      say "FAIL: the command printed nothing"
      rcs[$i]=1; notes[$i]=" (the command exited 0, but printed nothing)"
    fi
  fi
  [ "${rcs[$i]}" = 0 ] || break   # the tests need the set-up of command 1; stop at the first failure
done

# ------------------------------------------------------------------------------------------------- summary
echo
echo "==================================================================== fresh root check: summary"
echo "machine:   fresh Debian 12 ($suite, debootstrap minbase; $base_how in $(fmt_duration $base_secs))"
echo "npm:       unreachable (npm_config_registry=$npm_registry; registry.npmjs.org -> 127.0.0.1)"
echo "commit:    $commit ($commit_line)"
status=0
for i in "${!commands[@]}"; do
  if [ "$i" -lt "${#rcs[@]}" ]; then
    printf 'command %d: exit %s%s after %s (%s)\n  %s\n' $((i + 1)) "${rcs[$i]}" "${notes[$i]:-}" \
      "$(fmt_duration "${secs[$i]}")" "${names[$i]}" "${commands[$i]}"
    [ "${rcs[$i]}" = 0 ] || status=1
  else
    printf 'command %d: not run (an earlier command failed) (%s)\n  %s\n' $((i + 1)) "${names[$i]}" "${commands[$i]}"
    status=1
  fi
done
if [ -s "$logs/run.stdout" ]; then
  echo "generated text (stdout of build/moep run):"
  sed 's/^/  | /' "$logs/run.stdout" | head -n 20
fi
if [ -f "$logs/test.log" ]; then
  echo "skipped tests and why (lines of the test log that say 'skip'):"
  skips="$(grep -i 'skip' "$logs/test.log" || true)"
  if [ -n "$skips" ]; then sed 's/^/  /' <<<"$skips" | head -n 60; else echo "  (none)"; fi
  # test.sh ends with its own list, "test.sh: skipped tests:" then "test.sh: why:" and indented lines.
  block="$(awk '/^test\.sh: skipped tests:/ { on = 1; print; next }
                on && (/^  / || /^test\.sh: why:/) { print; next }
                { on = 0 }' "$logs/test.log")"
  if [ -n "$block" ]; then
    echo "test.sh's own list of skipped tests and why:"
    sed 's/^/  /' <<<"$block"
  fi
  echo "ctest:"
  passed="$(grep -E 'tests passed' "$logs/test.log" || true)"
  echo "  ${passed:-(no 'tests passed' line)}"
fi
echo "logs:      $logs"
if [ "$status" = 0 ]; then echo "RESULT: PASS"; else echo "RESULT: FAIL"; fi
exit "$status"
