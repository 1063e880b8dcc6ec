#!/usr/bin/env bash
# Generates snapstack's manual pages, section 8, from a built binary: snapstack.8 and one page
# per verb (snapstack-protect.8, ...), written by swift-argument-parser's generate-manual from
# the binary's own help, so that the pages say what `snapstack help VERB` says.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: systemd/make-manuals.sh --binary FILE --out DIR [--date YYYY-MM-DD] [--generator FILE]

Writes DIR/snapstack.8 and DIR/snapstack-VERB.8 for every verb (mdoc, uncompressed), made by
swift-argument-parser's generate-manual from FILE --experimental-dump-help.
--date       the pages' date (default: $SOURCE_DATE_EPOCH if set, else the date of the
             source tree's last commit, else today)
--generator  a generate-manual executable; by default it is built once (offline) from the
             swift-argument-parser checkout of this source tree's build, .build/checkouts/,
             into .build/generate-manual/, with the swift toolchain on PATH or in /opt/swift.
EOF
}

die() { echo "make-manuals.sh: $*" >&2; exit 1; }

binary=
out=
date=
generator=${GENERATE_MANUAL:-}
while (($#)); do
    case "$1" in
        --binary) binary=${2:?--binary needs a file}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --date) date=${2:?--date needs YYYY-MM-DD}; shift 2 ;;
        --generator) generator=${2:?--generator needs a file}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -n $binary && -n $out ]] || { usage >&2; die "--binary and --out are required"; }
[[ -x $binary ]] || die "--binary '$binary' is not an executable file"
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=$(dirname "$here")

if [[ -z $date ]]; then
    if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
        date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)
    elif stamp=$(git -C "$source_dir" log -1 --format=%cs 2>/dev/null) && [[ -n $stamp ]]; then
        date=$stamp
    else
        date=$(date -u +%F)
    fi
fi
[[ $date =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || die "--date '$date' is not YYYY-MM-DD"

if [[ -z $generator ]]; then
    checkout=$source_dir/.build/checkouts/swift-argument-parser
    [[ -f $checkout/Tools/generate-manual/GenerateManual.swift ]] ||
        die "no swift-argument-parser checkout at $checkout; run 'swift build' in $source_dir first, or pass --generator FILE"
    if ! command -v swift >/dev/null && [[ -x /opt/swift/usr/bin/swift ]]; then PATH=/opt/swift/usr/bin:$PATH; fi
    command -v swift >/dev/null || die "swift is not on PATH (nor in /opt/swift); it builds generate-manual, or pass --generator FILE"
    scratch=$source_dir/.build/generate-manual
    # The checkout has no dependencies of its own, so this builds without the network.
    swift build --package-path "$checkout" --scratch-path "$scratch" --product generate-manual >&2 ||
        die "building generate-manual from $checkout failed"
    generator=$scratch/debug/generate-manual
fi
[[ -x $generator ]] || die "generate-manual '$generator' is not an executable file"

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$generator" "$binary" --multi-page --section 8 --date "$date" \
    --authors "the snapstack authors" --output-directory "$work" ||
    die "generate-manual failed on $binary"

# generate-manual names a verb's page snapstack.VERB.8; Debian (and man-db's `man snapstack
# protect`, which looks for snapstack-protect) name it snapstack-VERB.8. It also copies help
# texts verbatim: a blank line between paragraphs, which mdoc does not allow (`.Pp` is its
# paragraph break), and indented example lines, which run into the text after them unless
# they are a literal display. `snapstack help` is ArgumentParser's own verb, and `lvm-exec`
# snapstack's own child process (hidden from --help): no page for either.
for page in "$work"/snapstack*.8; do
    name=$(basename "$page" .8)
    [[ $name == snapstack.help || $name == snapstack.lvm-exec ]] && continue
    awk '
        function close_display() { if (display) { print ".Ed"; display = 0 } }
        /^\.Dt SNAPSTACK\./ { sub(/^\.Dt SNAPSTACK\./, ".Dt SNAPSTACK-") }
        /^\.Xr snapstack\.(help|lvm-exec) / { next }
        /^\.Xr snapstack\./ { sub(/^\.Xr snapstack\./, ".Xr snapstack-") }
        /^  / {
            if (!display) { print ".Bd -literal -offset indent"; display = 1 }
            line = substr($0, 3)
            if (line ~ /^[.\047]/) line = "\\&" line
            print line
            next
        }
        { close_display() }
        /^$/ { print ".Pp"; next }
        { print }
        END { close_display() }
    ' "$page" >"$out/${name//./-}.8"
done
# A last .Xr that was followed by the help page now ends the list with a comma.
sed -i -e '/^\.Sh "SEE ALSO"/,/^\.Sh/ { /^\.Xr .* ,$/ { N; s/ ,\n\.Sh/\n.Sh/ } }' "$out"/snapstack*.8
[[ -f $out/snapstack.8 && -f $out/snapstack-protect.8 ]] || die "generate-manual wrote no pages for snapstack into $out"
echo "make-manuals.sh: wrote $(ls "$out"/snapstack*.8 | wc -l) pages into $out (dated $date)" >&2
