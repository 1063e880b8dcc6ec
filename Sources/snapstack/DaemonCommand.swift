import ArgumentParser
import Foundation
import SnapstackDaemon

struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Rebuild stacks at boot, wrap hotplugged disks, and apply the auto-protect policy.",
        discussion: """
            Runs until SIGTERM (systemd/snapstack.service runs it with Type=notify, before \
            local-fs-pre.target). At start it runs reconcile, so that every protected disk that \
            is present gets its stack back (with its change tracking when its filesystem proves \
            it untouched since the last clean stop; see `snapstack help reconcile`), then applies the policy \
            to the disks present. Then it follows udev: a disk that appears is restacked when \
            it is a protected one (found by its recorded identity), or protected when a rule \
            of the policy matches it; the stack of a disk that goes away is torn down. The \
            state lock is taken per operation, so every other command works beside it. When \
            it stops it records, for each protected disk whose top device is unused, the \
            filesystem stamp that the next rebuild checks. One daemon runs per state \
            directory: it holds daemon.lock there for its whole run (at a shutdown, \
            snapstack-blkdeactivate.service holds lvm2's blkdeactivate until it is released); \
            a second one waits --lock-timeout, then exits 1 naming the first.

            The policy is /etc/snapstack/snapstack.conf (YAML; systemd/snapstack.conf.example \
            explains it). SIGHUP re-reads it; a file with errors is reported with its line, \
            and the previous policy stays. While it runs, its protect rules are also compiled \
            into /run/udev/rules.d/61-snapstack-policy.rules, so that a disk plugged in that a \
            rule matches is hidden from mounters (SYSTEMD_READY=0, UDISKS_IGNORE=1) from its \
            first udev event until it is stacked, or released when it is left alone \
            (/run/snapstack/released); the file goes when the daemon stops. With a metrics: section it writes its metrics for \
            node_exporter's textfile collector (see `snapstack help metrics`). Logs go to the journal under systemd, to stderr \
            otherwise. Exit codes: 0 after SIGTERM; 64 when --check-config finds an error.
            """)

    @Option(name: .customLong("config"), help: ArgumentHelp("The policy file.", valueName: "file"),
            completion: .file())
    var config: String?

    @Flag(name: .customLong("check-config"), help: "Check the policy file, print what it says, and exit.")
    var checkConfig = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.",
            completion: .list(DaemonOptions.logLevels))
    var logLevel: String = "info"

    @OptionGroup var global: GlobalOptions

    func validate() throws {
        guard DaemonOptions.logLevels.contains(logLevel) else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func run() throws {
        let path = config ?? DaemonOptions.defaultConfigPath
        if checkConfig {
            switch Daemon.checkConfiguration(path: path) {
            case .success(let text):
                Output.print(text)
            case .failure(let error):
                Output.error("snapstack: \(error)")
                throw ExitStatus.usage.exitCode
            }
            return
        }
        // The signals the daemon handles are blocked in every thread from here on (threads
        // inherit the mask), so that one arriving before its handler is registered waits
        // instead of killing the process; the handlers read them through signalfd.
        var blocked = sigset_t()
        sigemptyset(&blocked)
        for signal in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&blocked, signal) }
        pthread_sigmask(SIG_BLOCK, &blocked, nil)
        let options = DaemonOptions(stateDirectory: global.resolvedStateDirectory, configPath: path,
                                    configExplicit: config != nil, lockTimeout: global.lockTimeout,
                                    logLevel: logLevel)
        // The command line is synchronous; the daemon runs on the concurrency pool meanwhile.
        let outcome = Outcome()
        let done = DispatchSemaphore(value: 0)
        Task {
            do { try await Daemon.run(options) } catch { outcome.error = "\(error)" }
            done.signal()
        }
        done.wait()
        if let error = outcome.error {
            Output.error("snapstack: daemon: \(error)")
            throw ExitStatus.failed.exitCode
        }
    }

    private final class Outcome: @unchecked Sendable {
        var error: String?
    }
}
