import ArgumentParser
import Foundation
import Snapstack
import StateDatabase
import SystemPackage

/// Shell completion of the names snapstack's state records: protected devices, snapshots
/// (`NAME-SNAP`) and exports. The shell runs `snapstack` for these while the user presses TAB,
/// so a read here never prints an error, never creates or upgrades state, and never waits on
/// the state lock for more than a moment: on any problem it offers nothing.
enum StateCompletion {
    /// Protected device names, for arguments that name one.
    static let devices = CompletionKind.custom { words, _, _ in names(words) { database in try database.devices().map(\.name) } }

    /// Snapshot names as `drop`, `merge`, `extend` and `export` take them: `NAME-SNAP`.
    static let snapshots = CompletionKind.custom { words, _, _ in
        names(words) { database in
            try database.devices().flatMap { device in
                try database.snapshots(deviceID: device.id).map { "\(device.name)-\($0.name)" }
            }
        }
    }

    /// Export ids, for `--since`.
    static let exports = CompletionKind.custom { words, _, _ in names(words) { database in try database.exports().map(\.id) } }

    /// How long to wait for a command holding the state lock exclusively before reading anyway.
    static let lockWait = 0.2

    /// Reads `body` from the state directory the command line names, or offers nothing.
    static func names(_ words: [String], _ body: (StateDatabase) throws -> [String]) -> [String] {
        let directory = StateDirectory.resolve(option: stateDirectoryOption(in: words))
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.string, isDirectory: &isDirectory), isDirectory.boolValue,
              FileManager.default.fileExists(atPath: StateDatabase.databasePath(in: directory.string))
        else { return [] }
        // The shared lock keeps a half-done change out of view when it is free at once; a
        // command holding it for long (a merge, a protect) must not stall the shell, and SQLite
        // gives a consistent read without it, so the names are read either way.
        let lock = try? StateLock(directory: directory, mode: .shared, timeout: lockWait)
        defer { withExtendedLifetime(lock) {} }
        do {
            guard let database = try StateDatabase.open(readOnly: directory.string, upgrading: false) else { return [] }
            return try body(database).sorted()
        } catch {
            return []
        }
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
