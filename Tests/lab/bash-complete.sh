#!/usr/bin/env bash
# Usage: bash-complete.sh COMPLETION-SCRIPT LINE
# Sources a bash completion script and calls the function it registered for `snapstack` as
# bash does for a TAB at the end of LINE (COMP_LINE, COMP_POINT, COMP_WORDS, COMP_CWORD), then
# prints COMPREPLY, one word a line. Used by Tests/lab/manuals-check.sh and the VM suite.
script=$1 line=$2
source "$script"
spec=$(complete -p snapstack) || { echo "no completion registered for snapstack" >&2; exit 2; }
[[ $spec =~ -F\ ([^ ]+) ]] || { echo "no function in: $spec" >&2; exit 2; }
COMP_LINE=$line
COMP_POINT=${#line}
read -ra COMP_WORDS <<<"$line"
[[ $line == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMPREPLY=()
"${BASH_REMATCH[1]}" snapstack "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
for word in "${COMPREPLY[@]}"; do printf '%s\n' "$word"; done
