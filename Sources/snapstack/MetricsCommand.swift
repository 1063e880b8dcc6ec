import ArgumentParser
import Foundation
import Snapstack
import SystemPackage

struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "Print snapstack's metrics in Prometheus' text format, or write them to a file atomically.",
        discussion: """
            The metrics are for node_exporter's textfile collector, which reads every *.prom \
            file of its directory (--collector.textfile.directory; /var/lib/prometheus/node-exporter \
            on Debian): snapstack opens no socket. They are read as the devices, snapshots, \
            exports and events reports read their values, under the shared state lock. \
            With --to, FILE is replaced atomically (a temporary file in the same directory, \
            fsynced, mode 0644, renamed over FILE), so the collector never reads half a file. \
            `snapstack daemon` writes the file itself when the policy file's metrics: section \
            names one. The metric list is in the README.

            Example:
              snapstack metrics --to /var/lib/prometheus/node-exporter/snapstack.prom
            """)

    @Option(name: .customLong("to"), help: ArgumentHelp("Write the metrics to this file instead of stdout.", valueName: "file"))
    var file: String?

    @OptionGroup var global: GlobalOptions

    func validate() throws {
        if let file, file.isEmpty { throw ValidationError("--to needs a file name") }
    }

    func run() throws {
        try running {
            let text = try global.orchestrator(.shared).metricsText()
            if let file {
                try SnapstackMetrics.write(text, to: FilePath(file))
            } else {
                Output.print(text, terminator: "")
            }
        }
    }
}
