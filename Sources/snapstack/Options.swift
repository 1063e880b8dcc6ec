import ArgumentParser
import BlockIO
import Foundation
import Locking
import Reports
import Snapstack
import SnapstackErrors
import SystemPackage

/// Options every subcommand takes.
struct GlobalOptions: ParsableArguments {
    @Option(name: .customLong("state-dir"),
            help: ArgumentHelp("Directory of snapstack's database and metadata.",
                               discussion: "Default: $SNAPSTACK_STATE_DIR if set, else /var/lib/snapstack.",
                               valueName: "dir"),
            completion: .directory)
    var stateDirectory: String?

    @Option(name: .customLong("lock-timeout"),
            help: ArgumentHelp("Seconds to wait for another snapstack process to finish.", valueName: "seconds"))
    var lockTimeout: Double = 30

    /// The longest `--lock-timeout`: a day. Past it (or NaN, or infinity) a wait would never
    /// end, and the daemon's lock watchdog could not represent it.
    static let longestLockTimeout: Double = 86_400

    func validate() throws {
        guard lockTimeout.isFinite, lockTimeout >= 0, lockTimeout <= Self.longestLockTimeout else {
            throw ValidationError("--lock-timeout is a number of seconds from 0 to \(Int(Self.longestLockTimeout))")
        }
    }

    var resolvedStateDirectory: FilePath { StateDirectory.resolve(option: stateDirectory) }

    /// Opens the state under the lock; notices go to stderr.
    func orchestrator(_ mode: FileLock.Mode = .exclusive) throws -> Orchestrator {
        let orchestrator = try Orchestrator(stateDirectory: resolvedStateDirectory, lockTimeout: lockTimeout, mode: mode)
        orchestrator.notice = { Output.error("snapstack: " + $0) }
        return orchestrator
    }
}

/// `--reportformat`, after `lvs`.
struct FormatOption: ParsableArguments {
    @Option(name: .customLong("reportformat"), help: "basic (aligned text) or json.")
    var format: ReportOptions.Format = .basic
}

extension ReportOptions.Format: ExpressibleByArgument {}

/// The report options of `lvs(8)` that snapstack's reports share.
struct ReportArguments: ParsableArguments {
    @Option(name: .customShort("o"), help: ArgumentHelp(
        "Fields to show: a,b replaces the defaults, +a adds, -a removes; 'all' for every field, 'help' to list them.",
        valueName: "fields"))
    var fields: String?

    @Flag(name: .customLong("noheadings"), help: "Leave out the heading line.")
    var noHeadings = false

    @Option(name: .customLong("separator"), help: "Join columns with this string instead of aligning them.")
    var separator: String?

    @Flag(name: .customLong("aligned"), help: "With --separator, align the columns too.")
    var aligned = false

    @Option(name: .customLong("units"), help: ArgumentHelp(
        "Size units: h (human, default), H (human, powers of 1000), b, s (sectors), k m g t p (binary), K M G T P (SI). JSON always gives bytes.",
        valueName: "unit"))
    var units: String = "h"

    @Flag(name: .customLong("nosuffix"), help: "Print sizes without their unit letter.")
    var noSuffix = false

    @OptionGroup var format: FormatOption

    /// Prints `report` as asked; `-o help` prints the field list.
    func print(_ report: Report) throws {
        let units: Units
        do { units = try Units(parsing: self.units) } catch {
            throw ValidationError(error.description)
        }
        // Scripts read JSON: without -o they get every field, so each row has name and path.
        let fields = self.fields ?? (format.format == .json ? "all" : nil)
        let options = ReportOptions(fields: fields, noHeadings: noHeadings, separator: separator, aligned: aligned,
                                    units: units, noSuffix: noSuffix, format: format.format)
        do {
            Output.print(try render(report, options: options), terminator: "")
        } catch .help(let text) {
            Output.print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
        } catch {
            throw ValidationError(error.description)
        }
    }
}

/// A size written as LVM writes them (`4G`, `512M`, `64K`); a bare number is bytes.
struct SizeArgument: ExpressibleByArgument {
    var bytes: Bytes
    init?(argument: String) {
        guard let bytes = try? Bytes(parsing: argument) else { return nil }
        self.bytes = bytes
    }
}

/// A store size: `SIZE` or `PCT%` of each origin.
struct StoreSizeArgument: ExpressibleByArgument {
    var size: SnapshotOptions.Size
    init?(argument: String) {
        if argument.hasSuffix("%") {
            guard let percent = Double(argument.dropLast()), percent > 0, percent <= 100 else { return nil }
            size = .percent(percent)
        } else {
            guard let bytes = try? Bytes(parsing: argument), bytes > .zero else { return nil }
            size = .bytes(bytes)
        }
    }
}

/// stdout and stderr, unbuffered where it matters: a line a script waits for is flushed.
enum Output {
    static func print(_ text: String, terminator: String = "\n") {
        FileHandle.standardOutput.write(Data((text + terminator).utf8))
    }

    static func error(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }
}

/// Runs a command body and turns a snapstack error into its one-line message and exit code.
func running(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as SnapstackError {
        Output.error("snapstack: \(error)")
        throw ExitStatus(error.kind).exitCode
    }
}
