import ArgumentParser
import Foundation
import Snapstack
import SystemPackage

/// Shell completion of the names snapstack's state records: protected devices, snapshots
/// (`NAME-SNAP`) and exports. The shell runs `snapstack` for these while the user presses TAB,
/// so a read here never prints an error, never creates or upgrades state, and never waits on
/// the state lock for more than a moment: on any problem it offers nothing.
enum StateCompletion {
    /// Protected device names, for arguments that name one.
    static let devices = CompletionKind.custom { words, _, _ in names(words).devices }

    /// Snapshot names as `drop`, `merge`, `extend` and `export` take them: `NAME-SNAP`.
    static let snapshots = CompletionKind.custom { words, _, _ in names(words).snapshots }

    /// Export ids, for `--since`.
    static let exports = CompletionKind.custom { words, _, _ in names(words).exports }

    /// How long to wait for a command holding the state lock exclusively before reading anyway.
    static let lockWait = 0.2

    /// The names on record in the state directory the command line names.
    static func names(_ words: [String]) -> RecordedNames {
        RecordedNames.read(stateDirectory: StateDirectory.resolve(option: stateDirectoryOption(in: words)), lockWait: lockWait)
    }

    /// The value of `--state-dir DIR` or `--state-dir=DIR` among the shell words, unquoted.
    static func stateDirectoryOption(in words: [String]) -> String? {
        var value: String?
        for (index, word) in words.enumerated() {
            if word == "--state-dir", index + 1 < words.count {
                value = words[index + 1]
            } else if word.hasPrefix("--state-dir=") {
                value = String(word.dropFirst("--state-dir=".count))
            }
        }
        return value.map(unquoted).flatMap { $0.isEmpty ? nil : $0 }
    }

    /// A shell word as the command would receive it, for the quoting people type in paths:
    /// single and double quotes removed, backslash escapes resolved, a leading `~/` expanded.
    static func unquoted(_ word: String) -> String {
        var result = ""
        var quote: Character?
        var escaped = false
        for character in word {
            if escaped {
                result.append(character)
                escaped = false
            } else if character == "\\" && quote != "'" {
                escaped = true
            } else if let open = quote {
                if character == open { quote = nil } else { result.append(character) }
            } else if character == "'" || character == "\"" {
                quote = character
            } else {
                result.append(character)
            }
        }
        if result.hasPrefix("~/"), let home = ProcessInfo.processInfo.environment["HOME"] {
            result = home + result.dropFirst()
        }
        return result
    }
}
