#!/usr/bin/env bash
# Checks the manual pages and shell completions generated from a built snapstack, on the host
# (no root, no device-mapper): every verb has a page that man renders without a warning; the
# bash, zsh and fish scripts parse; bash and fish complete verbs and options; completion of
# names from a state directory that does not exist offers nothing and creates nothing; and
# systemd/install.sh puts everything where Debian does. Fails loudly; skips nothing.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: Tests/lab/manuals-check.sh [BINARY]

BINARY defaults to .build/debug/snapstack. Needs man-db, groff-base, zsh and fish
(Tests/lab/setup.sh installs them). Ends with "N passed, M failed".
EOF
}
case "${1:-}" in -h | --help) usage; exit 0 ;; esac

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
completer=$PWD/Tests/lab/bash-complete.sh
binary=${1:-.build/debug/snapstack}
[[ -x $binary ]] || { echo "manuals-check: $binary is not built (swift build)" >&2; exit 1; }
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
for tool in man groff bash zsh fish gzip; do
    command -v "$tool" >/dev/null || { echo "manuals-check: $tool is not installed (Tests/lab/setup.sh installs it)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/snapstack-manuals.XXXXXX)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS  $1"; }
fail() { failed=$((failed + 1)); echo "FAIL  $1"; }
check() { # check NAME COMMAND...: passes when COMMAND succeeds
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# --- manual pages -------------------------------------------------------------------------

bash systemd/make-manuals.sh --binary "$binary" --out "$work/man"

# The verbs, as `snapstack --help` lists them (not from the dump generate-manual reads).
mapfile -t verbs < <("$binary" --help | awk '/^SUBCOMMANDS:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^[^ ]/ { on = 0 }' |
    grep -vx help)
if ((${#verbs[@]} >= 15)); then pass "snapstack --help lists ${#verbs[@]} verbs"; else fail "snapstack --help lists only ${#verbs[@]} verbs: ${verbs[*]}"; fi
# A verb with verbs of its own (initramfs plan|stack|stop) has a page for each, named
# snapstack-VERB-SUBVERB.
subverbs() { "$binary" "$1" --help | awk '/^SUBCOMMANDS:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^[^ ]/ { on = 0 }' | grep -vx help || true; }
for verb in "${verbs[@]}"; do
    for sub in $(subverbs "$verb"); do verbs+=("$verb-$sub"); done
done

# The witness must see warnings where there are some, or its silence proves nothing.
printf '.Dd December 2, 2026\n.Dt BAD 8\n.Os\n.Sh NAME\n.Nm bad\n.Nd a page with faults\n.Sh DESCRIPTION\nText.\n\n.Bogus macro\n.Bl -tag\n.It x\n' >"$work/bad.8"
bad_warnings=$(man --warnings -l "$work/bad.8" 2>&1 >/dev/null || true)
if [[ $bad_warnings == *warning* ]]; then pass "man --warnings reports a faulty page's warnings"; else fail "man --warnings said nothing about a faulty page: '$bad_warnings'"; fi

render() { # render PAGE TITLE: man renders PAGE with no warning, and its NAME is TITLE
    local warnings text
    warnings=$(MANWIDTH=80 man --warnings -l "$1" 2>&1 >"$work/rendered") || { echo "  man failed on $1: $warnings"; return 1; }
    text=$(cat "$work/rendered")
    [[ -z $warnings ]] || { echo "  $1: $warnings"; return 1; }
    [[ -n $text ]] || { echo "  $1 rendered empty"; return 1; }
    grep -q "^     $2 — " "$work/rendered" || { echo "  $1 has no NAME line for '$2'"; return 1; }
}
check "snapstack.8 renders without warnings" render "$work/man/snapstack.8" snapstack
for verb in "${verbs[@]}"; do
    page=$work/man/snapstack-$verb.8
    if [[ -f $page ]]; then
        check "snapstack-$verb.8 renders without warnings" render "$page" "snapstack ${verb//-/ }"
    else
        fail "no page snapstack-$verb.8 for verb $verb"
    fi
done
pages=$(cd "$work/man" && ls)
expected=$(printf '%s\n' snapstack.8 "${verbs[@]/#/snapstack-}" | sed '2,$ s/$/.8/' | sort)
if [[ $(sort <<<"$pages") == "$expected" ]]; then pass "pages are exactly snapstack.8 and one per verb and subverb"; else fail "pages differ from the verbs: $(diff <(sort <<<"$pages") <(echo "$expected") | tr '\n' ' ')"; fi
check "snapstack.8's SEE ALSO names snapstack-protect(8)" grep -qx '\.Xr snapstack-protect 8 ,' "$work/man/snapstack.8"

# --- completion scripts -------------------------------------------------------------------

for shell in bash zsh fish; do
    "$binary" --generate-completion-script "$shell" >"$work/snapstack.$shell"
done
check "bash -n accepts the bash completion" bash -n "$work/snapstack.bash"
check "zsh -n accepts the zsh completion" zsh -n "$work/snapstack.zsh"
check "fish --no-execute accepts the fish completion" fish --no-execute "$work/snapstack.fish"

# bash: the registered function, called as bash calls it for a TAB at the end of LINE.
mkdir -p "$work/bin"
ln -s "$binary" "$work/bin/snapstack"
offers() { # offers STATE-DIR LINE EXPECTED...: bash offers exactly EXPECTED (sorted), quietly
    local state=$1 line=$2; shift 2
    local got err
    got=$(cd "$work" && PATH=$work/bin:$PATH SNAPSTACK_STATE_DIR=$state bash "$completer" "$work/snapstack.bash" "$line" 2>"$work/err" | sort)
    err=$(cat "$work/err")
    local want; want=$(printf '%s\n' "$@" | sed '/^$/d' | sort)
    [[ $got == "$want" && -z $err ]] || { echo "  '$line': got [$(echo $got)], want [$(echo $want)], stderr '$err'"; return 1; }
}
missing=$work/no-such-state
check "bash: snapstack un<TAB> gives unprotect" offers "$missing" "snapstack un" unprotect
check "bash: snapstack dr<TAB> gives drop" offers "$missing" "snapstack dr" drop
check "bash: snapstack unprotect --st<TAB> gives --state-dir" offers "$missing" "snapstack unprotect --st" --state-dir
check "bash: snapstack daemon --log-level w<TAB> gives warning" offers "$missing" "snapstack daemon --log-level w" warning
check "bash: snapstack export x --format <TAB> gives raw, delta" offers "$missing" "snapstack export x --format " delta raw
touch "$work/image.img"
check "bash: snapstack verify ima<TAB> completes a file name" offers "$missing" "snapstack verify ima" image.img
check "bash: snapstack unprotect <TAB> offers nothing without a state directory" offers "$missing" "snapstack unprotect "
check "bash: snapstack drop <TAB> offers nothing without a state directory" offers "$missing" "snapstack drop "
check "completion created no state directory" test ! -e "$missing"
mkdir "$work/state" && "$binary" devices --state-dir "$work/state" >/dev/null
check "bash: snapstack drop <TAB> offers nothing from an empty state" offers "$work/state" "snapstack drop "
check "bash: snapstack changes <TAB> offers nothing from an empty state" offers "$work/state" "snapstack changes "

# fish: its own completion engine, asked with complete -C. Only the verbs: past them fish's
# script reads `commandline`, which a non-interactive fish refuses.
fish_offers() { # fish_offers LINE EXPECTED-FIRST-WORD
    local got
    got=$(PATH=$work/bin:$PATH fish --no-config -c "source $work/snapstack.fish; complete -C '$1'" 2>&1 | cut -f1)
    [[ $got == "$2" ]] || { echo "  fish '$1': got [$(echo $got)], want [$2]"; return 1; }
}
check "fish: snapstack unp<TAB> gives unprotect" fish_offers "snapstack unp" unprotect

# --- install.sh ---------------------------------------------------------------------------

bash systemd/install.sh --root "$work/root" --binary "$binary" --no-reload >"$work/install.log"
for file in /usr/share/man/man8/snapstack.8.gz /usr/share/man/man8/snapstack-protect.8.gz \
    /usr/share/bash-completion/completions/snapstack /usr/share/zsh/vendor-completions/_snapstack \
    /usr/share/fish/vendor_completions.d/snapstack.fish; do
    check "install.sh --binary installs $file" test -s "$work/root$file"
done
for file in /usr/share/initramfs-tools/hooks/snapstack /usr/share/initramfs-tools/scripts/local-top/snapstack \
    /usr/lib/dracut/modules.d/90snapstack/snapstack-pre-mount.sh /usr/lib/dracut/modules.d/90snapstack/snapstack-pre-pivot.sh \
    /usr/lib/systemd/system-shutdown/snapstack; do
    check "install.sh installs $file, executable, and sh -n accepts it" sh -c 'test -x "$1" && sh -n "$1"' - "$work/root$file"
done
check "install.sh installs dracut's 90snapstack/module-setup.sh, and bash -n accepts it" \
    bash -n "$work/root/usr/lib/dracut/modules.d/90snapstack/module-setup.sh"
check "the initramfs hook reads the state directory the unit uses" grep -qx 'STATE_DIR=/var/lib/snapstack' "$work/root/usr/share/initramfs-tools/hooks/snapstack"
check "the dracut module reads the state directory and binary the unit uses" sh -c '
    grep -qx "SNAPSTACK_STATE_DIR=/var/lib/snapstack" "$1" && grep -qx "SNAPSTACK_BINARY=/usr/sbin/snapstack" "$1"' - \
    "$work/root/usr/lib/dracut/modules.d/90snapstack/module-setup.sh"
check "install.sh installs the blkdeactivate barrier, waiting on the daemon's lock" \
    grep -q '^ExecStop=-/usr/bin/flock --shared --wait 130 /var/lib/snapstack/daemon.lock ' "$work/root/usr/lib/systemd/system/snapstack-blkdeactivate.service"
installed_pages=$(ls "$work/root/usr/share/man/man8" | wc -l)
check "install.sh installs one page per verb and snapstack.8 ($installed_pages)" test "$installed_pages" -eq $((${#verbs[@]} + 1))
check "the installed snapstack-unprotect.8.gz renders without warnings" render "$work/root/usr/share/man/man8/snapstack-unprotect.8.gz" "snapstack unprotect"
check "man snapstack protect finds snapstack-protect.8.gz" \
    test "$(man -M "$work/root/usr/share/man" -w snapstack protect)" = "$work/root/usr/share/man/man8/snapstack-protect.8.gz"
bash systemd/install.sh --root "$work/root2" --state-dir /srv/snapstack --sbindir /opt/snapstack/sbin --no-reload >"$work/install2.log"
check "install.sh --state-dir and --sbindir reach the initramfs-tools hook and the dracut module" sh -c '
    grep -qx "STATE_DIR=/srv/snapstack" "$1/usr/share/initramfs-tools/hooks/snapstack" &&
    grep -qx "SNAPSTACK=/opt/snapstack/sbin/snapstack" "$1/usr/share/initramfs-tools/hooks/snapstack" &&
    grep -qx "SNAPSTACK_STATE_DIR=/srv/snapstack" "$1/usr/lib/dracut/modules.d/90snapstack/module-setup.sh" &&
    grep -qx "SNAPSTACK_BINARY=/opt/snapstack/sbin/snapstack" "$1/usr/lib/dracut/modules.d/90snapstack/module-setup.sh"' - "$work/root2"
check "install.sh without --binary says it skips manuals and completions" grep -q '^skipped manual pages and shell completions' "$work/install2.log"
check "install.sh without --binary installs no manuals" test ! -e "$work/root2/usr/share/man"

echo "$passed passed, $failed failed"
((failed == 0 && passed > 0))
