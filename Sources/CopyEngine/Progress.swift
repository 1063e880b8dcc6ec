import BlockIO
import Reports
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Where a copy stands, handed to the progress callback after every write.
public struct CopyProgress: Hashable, Sendable {
    /// Bytes of the requested extents handed to the sink so far.
    public var bytesDone: UInt64
    /// Bytes of all requested extents.
    public var bytesTotal: UInt64
    /// Average since the copy started.
    public var bytesPerSecond: Double
    /// Seconds left at the average rate; nil until a rate is known.
    public var etaSeconds: Double?
    public var elapsedSeconds: Double

    public init(bytesDone: UInt64, bytesTotal: UInt64, bytesPerSecond: Double, etaSeconds: Double?, elapsedSeconds: Double) {
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
        self.bytesPerSecond = bytesPerSecond
        self.etaSeconds = etaSeconds
        self.elapsedSeconds = elapsedSeconds
    }

    init(done: UInt64, total: UInt64, elapsedNanoseconds: UInt64) {
        let seconds = Double(elapsedNanoseconds) / 1e9
        let rate = seconds > 0 ? Double(done) / seconds : 0
        self.init(bytesDone: done, bytesTotal: total, bytesPerSecond: rate,
                  etaSeconds: rate > 0 ? Double(total &- min(done, total)) / rate : nil,
                  elapsedSeconds: seconds)
    }

    public var fraction: Double { bytesTotal == 0 ? 1 : Double(bytesDone) / Double(bytesTotal) }
}

/// Renders progress for a person or a program:
/// - `.terminal`: one line on stderr, rewritten in place (`\r`, erase line), at most every
///   `interval` seconds, ended with a newline by `finish`;
/// - `.jsonLines`: one JSON object per line on stderr, at most every `interval` seconds, and a
///   last one with `"done":true` from `finish`;
/// - `.automatic`: `.terminal` when stderr is a terminal (`isatty(2)`), otherwise nothing, so
///   that logs and pipes are not filled with carriage returns;
/// - `.silent`: nothing.
public final class ProgressReporter: Sendable {
    public enum Style: Hashable, Sendable {
        case automatic, terminal, jsonLines, silent
    }

    /// The style actually used (`.automatic` resolved).
    public let style: Style
    private let label: String
    private let interval: UInt64
    private let output: @Sendable (String) -> Void
    private let clock: any CopyClock
    private let lastShown = Mutex<(at: UInt64?, width: Int)>((nil, 0))

    /// `output` receives each rendered piece of text; by default it is written to stderr.
    public init(style: Style = .automatic, label: String = "copy", interval: Double? = nil,
                clock: any CopyClock = SystemClock(),
                output: (@Sendable (String) -> Void)? = nil) {
        var resolved = style
        if style == .automatic { resolved = isatty(STDERR_FILENO) == 1 ? .terminal : .silent }
        self.style = resolved
        self.label = label
        self.interval = UInt64((interval ?? (resolved == .jsonLines ? 1.0 : 0.2)) * 1e9)
        self.clock = clock
        self.output = output ?? { text in
            text.utf8CString.withUnsafeBytes { raw in
                _ = writeFully(STDERR_FILENO, UnsafeRawBufferPointer(rebasing: raw.dropLast()))
            }
        }
    }

    /// Shows `progress` unless the last showing was less than `interval` ago.
    public func report(_ progress: CopyProgress) {
        guard style != .silent else { return }
        let now = clock.now()
        let due = lastShown.withLock { state -> Bool in
            if let at = state.at, now &- at < interval { return false }
            state.at = now
            return true
        }
        if due { show(progress, done: false) }
    }

    /// Shows the final state and, on a terminal, ends the line.
    public func finish(_ progress: CopyProgress) {
        guard style != .silent else { return }
        show(progress, done: true)
    }

    /// A closure for `CopyEngine.run(progress:)`.
    public var callback: @Sendable (CopyProgress) -> Void { { [self] in report($0) } }

    private func show(_ progress: CopyProgress, done: Bool) {
        switch style {
        case .terminal:
            let text = ProgressReporter.line(label, progress)
            // Pad over what the previous, longer line left; no escape sequences needed.
            let pad = lastShown.withLock { state -> Int in
                let pad = max(0, state.width - text.count)
                state.width = text.count
                return pad
            }
            output("\r" + text + String(repeating: " ", count: pad) + (done ? "\n" : ""))
        case .jsonLines:
            output(ProgressReporter.json(label, progress, done: done) + "\n")
        case .automatic, .silent:
            break
        }
    }

    /// `label  1.5 GiB / 4.0 GiB  37%  412.3 MiB/s  ETA 0:06`.
    public static func line(_ label: String, _ progress: CopyProgress) -> String {
        let percent = Int((progress.fraction * 100).rounded(.down))
        var text = "\(label)  \(formatBytes(progress.bytesDone)) / \(formatBytes(progress.bytesTotal))  \(percent)%"
        text += "  \(formatBytes(UInt64(max(0, progress.bytesPerSecond))))/s"
        if let eta = progress.etaSeconds, eta.isFinite {
            text += "  ETA \(formatDuration(eta))"
        }
        return text
    }

    /// `{"label":"export","bytesDone":N,"bytesTotal":N,"bytesPerSecond":N,"etaSeconds":N,"elapsedSeconds":N,"done":false}`.
    public static func json(_ label: String, _ progress: CopyProgress, done: Bool) -> String {
        let eta = progress.etaSeconds.map { formatDecimal($0) } ?? "null"
        return "{\"label\":\(jsonString(label)),\"bytesDone\":\(progress.bytesDone),\"bytesTotal\":\(progress.bytesTotal),"
            + "\"bytesPerSecond\":\(UInt64(max(0, progress.bytesPerSecond))),\"etaSeconds\":\(eta),"
            + "\"elapsedSeconds\":\(formatDecimal(progress.elapsedSeconds)),\"done\":\(done)}"
    }

    /// Binary units with one decimal: `0 B`, `512 B`, `1.5 KiB`, `4.0 GiB`.
    public static func formatBytes(_ bytes: UInt64) -> String {
        let (scaled, unit) = Bytes(bytes).binaryScaled
        guard let unit else { return "\(bytes) B" }
        let tenths = Int((scaled * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(unit)"
    }

    /// `m:ss` or `h:mm:ss`.
    static func formatDuration(_ seconds: Double) -> String {
        let total = Int(seconds.rounded(.up))
        let (hours, minutes, secs) = (total / 3600, (total / 60) % 60, total % 60)
        let two = { (n: Int) in n < 10 ? "0\(n)" : "\(n)" }
        return hours > 0 ? "\(hours):\(two(minutes)):\(two(secs))" : "\(minutes):\(two(secs))"
    }

    /// Three decimals, no exponent.
    static func formatDecimal(_ value: Double) -> String {
        guard value.isFinite else { return "null" }
        let thousandths = Int64((value * 1000).rounded())
        let sign = thousandths < 0 ? "-" : ""
        let magnitude = thousandths.magnitude
        let fraction = String(magnitude % 1000)
        return "\(sign)\(magnitude / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
    }
}
