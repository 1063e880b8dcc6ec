import ArgumentParser
import Snapstack
import SystemPackage

/// Options every subcommand takes.
struct GlobalOptions: ParsableArguments {
    @Option(name: .customLong("state-dir"),
            help: ArgumentHelp("Directory of snapstack's database and metadata.",
                               discussion: "Default: $SNAPSTACK_STATE_DIR if set, else /var/lib/snapstack.",
                               valueName: "dir"))
    var stateDirectory: String?

    var resolvedStateDirectory: FilePath { StateDirectory.resolve(option: stateDirectory) }
}

/// How reports are printed, after `lvs --reportformat`.
enum ReportFormat: String, ExpressibleByArgument, CaseIterable {
    case basic
    case json
}

struct ReportOptions: ParsableArguments {
    @Option(name: .customLong("reportformat"), help: "basic (aligned text) or json.")
    var format: ReportFormat = .basic
}
