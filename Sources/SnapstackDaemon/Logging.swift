import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Where the daemon's log goes: the journal's native protocol when stderr is connected to the
/// journal (`$JOURNAL_STREAM` names stderr's device and inode, as systemd sets it), so that the
/// metadata arrive as fields (`journalctl -u snapstack SNAPSTACK_DEVICE=data`); otherwise one
/// line per entry on stderr, `TIME LEVEL message key=value...`.
public enum DaemonLogging {
    public static func makeLogger(level: Logger.Level,
                                  environment: [String: String] = ProcessInfo.processInfo.environment) -> Logger {
        let journal = stderrIsJournal(environment) && FileManager.default.fileExists(atPath: JournalLogHandler.socket)
        var logger = Logger(label: "snapstack") { _ in
            journal ? JournalLogHandler() as any LogHandler : StderrLogHandler() as any LogHandler
        }
        logger.logLevel = level
        return logger
    }

    static func stderrIsJournal(_ environment: [String: String]) -> Bool {
        guard let value = environment["JOURNAL_STREAM"] else { return false }
        let parts = value.split(separator: ":")
        var st = stat()
        guard parts.count == 2, fstat(2, &st) == 0 else { return false }
        return UInt64(parts[0]) == UInt64(st.st_dev) && UInt64(parts[1]) == UInt64(st.st_ino)
    }
}

/// Metadata rendered for a line or a journal field.
private func flatten(_ metadata: Logger.Metadata) -> [(String, String)] {
    metadata.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
}

struct StderrLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        var line = "\(Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))) \(event.level) \(event.message)"
        for (key, value) in flatten(all) {
            let quoted = value.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" }) || value.isEmpty
            line += " \(key)=" + (quoted ? "\"\(value.replacingOccurrences(of: "\"", with: "\\\""))\"" : value)
        }
        line = line.replacingOccurrences(of: "\n", with: "\\n") + "\n"
        FileHandle.standardError.write(Data(line.utf8))
    }
}

/// The journal's native protocol (systemd.journal-fields(7), "Native Journal Protocol"): one
/// datagram to /run/systemd/journal/socket per entry, each field in the binary form
/// `NAME\n<64-bit little-endian length><value>\n`, which carries any value. An entry too large
/// for a datagram (the journal would need a memfd) goes to stderr instead.
struct JournalLogHandler: LogHandler {
    static let socket = "/run/systemd/journal/socket"
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// syslog(3) priorities.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// A journal field name: capitals, digits and `_`, not starting with `_`, at most 64.
    static func fieldName(_ key: String) -> String {
        let mapped = key.uppercased().unicodeScalars.map { ("A"..."Z").contains($0) || ("0"..."9").contains($0) ? Character($0) : "_" }
        return String(("SNAPSTACK_" + String(mapped)).prefix(64))
    }

    /// One entry in the protocol's binary field form.
    static func encode(_ fields: [(String, String)]) -> [UInt8] {
        var payload: [UInt8] = []
        for (name, value) in fields {
            let bytes = Array(value.utf8)
            payload += Array(name.utf8) + [0x0A]
            withUnsafeBytes(of: UInt64(bytes.count).littleEndian) { payload += $0 }
            payload += bytes + [0x0A]
        }
        return payload
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        var fields: [(String, String)] = [
            ("MESSAGE", "\(event.message)"), ("PRIORITY", "\(Self.priority(event.level))"),
            ("SYSLOG_IDENTIFIER", "snapstack"), ("CODE_FILE", event.file), ("CODE_LINE", "\(event.line)"),
            ("CODE_FUNC", event.function),
        ]
        fields += flatten(all).map { (Self.fieldName($0.0), $0.1) }
        if sendDatagram(Self.encode(fields), to: Self.socket) != nil {
            StderrLogHandler(metadata: metadata, logLevel: logLevel).log(event: event)
        }
    }
}
