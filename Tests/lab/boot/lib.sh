# Sourced by every boot lab scenario (Tests/lab/boot/*.sh), which a oneshot unit runs at the end
# of each boot with its output on the serial console; Tests/lab/bootlab.sh reads the lines that
# start with "bootlab:" there. A scenario says `reboot_now` to be booted again, `done_now` when
# it has checked everything; a FAIL line fails it whatever follows.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
set -o pipefail
export PATH
boot=$(($(cat /root/bootlab/boots 2>/dev/null || echo 0) + 1))
echo "$boot" >/root/bootlab/boots
sync

say() { echo "bootlab: $*"; }

# check DESCRIPTION COMMAND...: one line, ok or FAIL, with what the command printed on failure.
check() {
    local description=$1 output
    shift
    if output=$("$@" 2>&1); then
        say "ok   $description"
    else
        say "FAIL $description"
        [ -z "$output" ] || printf '%s\n' "$output" | sed 's/^/bootlab:      /'
    fi
}

# run COMMAND...: a step the checks need; its failure fails the scenario and ends the boot,
# with what snapstack's unit logged last.
run() {
    local output
    if ! output=$(timeout 240 "$@" 2>&1); then
        say "FAIL $*"
        printf '%s\n' "$output" | sed 's/^/bootlab:      /'
        journalctl -b -u snapstack.service --no-pager -o short-monotonic | tail -n 40 | sed 's/^/bootlab:      journal: /'
        done_now
    fi
    [ -z "$output" ] || printf '%s\n' "$output"
}

reboot_now() { say "reboot"; sync; systemctl reboot; exit 0; }
done_now() { say "done"; sync; systemctl poweroff; exit 0; }
