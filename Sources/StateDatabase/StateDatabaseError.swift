import Foundation

/// Why the state database could not do what was asked.
///
/// Each description names what failed, why, and what the operator can do
/// about it, because these messages end up in front of a person at a shell.
public enum StateDatabaseError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file at `path` is not an SQLite database, or SQLite found it damaged.
    case corrupt(path: String, reason: String)
    /// The database at `path` records schema migrations this build does not
    /// know, so a newer snapstack wrote it. The file was left untouched.
    case newerSchema(path: String, unknown: [String])
    /// A device, or a snapshot of one device, already has this name.
    case duplicateName(String)
    /// The file or its directory could not be created, read or written.
    case io(path: String, reason: String)

    public var description: String {
        switch self {
        case let .corrupt(path, reason):
            return """
                snapstack's metadata database \(path) is damaged or is not a database \
                (\(reason)). Restore it from a backup, or move it away and run \
                `snapstack reconcile` to rebuild what can be recovered from the devices \
                that are set up in the kernel.
                """
        case let .newerSchema(path, unknown):
            return """
                snapstack's metadata database \(path) was written by a newer snapstack \
                (unknown schema changes: \(unknown.joined(separator: ", "))). This version \
                cannot use it safely and left it unchanged; run the newer snapstack \
                instead, or upgrade this one.
                """
        case let .duplicateName(name):
            return """
                the name '\(name)' is already in use. Choose another name, or remove the \
                existing one first.
                """
        case let .io(path, reason):
            return """
                cannot read or write snapstack's metadata at \(path): \(reason). Check that \
                the path exists, that it is writable by the user running snapstack \
                (normally root), and that its filesystem has free space.
                """
        }
    }
}
