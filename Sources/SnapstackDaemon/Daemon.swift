// `snapstack daemon`: boot-time reconcile, udev hotplug, the auto-protect policy, store watch,
// sd_notify, on swift-service-lifecycle.
import Foundation
import Locking
import Logging
import Policy
import ServiceLifecycle
import Snapstack
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// How the daemon runs.
public struct DaemonOptions: Sendable {
    public var stateDirectory: FilePath
    /// The configuration file (default `/etc/snapstack/snapstack.conf`).
    public var configPath: String
    /// Whether `configPath` was named: a named file must exist, the default one need not.
    public var configExplicit: Bool
    /// Seconds one operation waits for the state lock before trying again.
    public var lockTimeout: Double
    public var logLevel: Logger.Level

    public static let defaultConfigPath = Policy.defaultPath
    /// The names `--log-level` takes.
    public static let logLevels = Logger.Level.allCases.map(\.rawValue)

    /// `logLevel` is one of `logLevels`; anything else is `info`.
    public init(stateDirectory: FilePath, configPath: String = Policy.defaultPath, configExplicit: Bool = false,
                lockTimeout: Double = 30, logLevel: String) {
        self.init(stateDirectory: stateDirectory, configPath: configPath, configExplicit: configExplicit,
                  lockTimeout: lockTimeout, logLevel: Logger.Level(rawValue: logLevel) ?? .info)
    }

    public init(stateDirectory: FilePath, configPath: String = Policy.defaultPath, configExplicit: Bool = false,
                lockTimeout: Double = 30, logLevel: Logger.Level = .info) {
        self.stateDirectory = stateDirectory
        self.configPath = configPath
        self.configExplicit = configExplicit
        self.lockTimeout = lockTimeout
        self.logLevel = logLevel
    }
}

public enum Daemon {
    /// Runs until SIGTERM or SIGINT, which shut it down gracefully: the operation under way
    /// finishes (no device is left suspended), then the daemon tells the service manager it is
    /// stopping and returns.
    public static func run(_ options: DaemonOptions) async throws {
        // SIGHUP means "reload" from the first instant, before its handler is installed.
        signal(SIGHUP, SIG_IGN)
        let lifetime = try lifetimeLock(options)
        defer { withExtendedLifetime(lifetime) {} }
        let logger = DaemonLogging.makeLogger(level: options.logLevel)
        let notifier = SystemdNotifier()
        let worker = Worker()
        let policy = PolicyHolder(path: options.configPath, explicit: options.configExplicit)
        switch policy.load() {
        case .success(let loaded):
            logger.notice("starting", metadata: ["config": "\(options.configPath)", "rules": "\(loaded.rules.count)",
                                                 "state": "\(options.stateDirectory)"])
        case .failure(let error):
            // Stacks are rebuilt all the same: a bad file must not leave disks unprotected.
            logger.error("bad configuration, running without auto-protect rules: \(error)",
                         metadata: ["config": "\(error.file)", "line": "\(error.line)"])
        }
        // The stores: section is read at start; a reload changes the rules only.
        let stores = policy.policy.stores
        // So is the metrics: section.
        let metrics = policy.policy.metrics
        let trigger = MetricsTrigger()
        let rules = PolicyUdevRules(logger: logger)

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: HotplugService(options: options, policy: policy, notifier: notifier, worker: worker, logger: logger,
                                          onChange: { trigger.changed() }, rules: rules),
                  successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: ReloadService(policy: policy, notifier: notifier, logger: logger, rules: rules),
                  successTerminationBehavior: .ignore),
            .init(service: WatchdogService(notifier: notifier, worker: worker,
                                           stuckAfter: .seconds(Int64(options.lockTimeout) + 300), logger: logger),
                  successTerminationBehavior: .ignore),
        ]
        // Grows snapshot stores before they fill up, and drops a snapshot whose store overflowed.
        var storeLogger = logger
        storeLogger[metadataKey: "service"] = "store-watch"
        services.append(.init(
            service: Contained(name: "the store watch", logger: storeLogger, service: StoreWatchService(
                stateDirectory: options.stateDirectory, settings: StoreWatchSettings(
                    enabled: stores.enabled, threshold: stores.threshold, step: stores.step, limit: stores.limit,
                    pollInterval: stores.pollInterval), logger: storeLogger, onChange: { trigger.changed() })),
            successTerminationBehavior: .ignore))
        if let file = metrics.file {
            var metricsLogger = logger
            metricsLogger[metadataKey: "service"] = "metrics"
            services.append(.init(
                service: Contained(name: "the metrics writer", logger: metricsLogger, service: MetricsService(
                    file: FilePath(file), interval: metrics.interval, stateDirectory: options.stateDirectory, worker: worker,
                    trigger: trigger, logger: metricsLogger)),
                successTerminationBehavior: .ignore))
        }

        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services, gracefulShutdownSignals: [.sigterm, .sigint], cancellationSignals: [], logger: logger))
        try await group.run()
    }

    /// The lock file a daemon holds for as long as it runs, from before its boot-time pass to
    /// after its clean stop is recorded: one daemon per state directory (a second one waits
    /// for the first to stop, as a restart does, then says who holds it), and what
    /// `snapstack-blkdeactivate.service` waits on at a shutdown (`flock --shared`), so that
    /// lvm2's blkdeactivate removes no stack before the daemon has recorded its clean stop.
    static let lifetimeLockName = "daemon.lock"

    static func lifetimeLock(_ options: DaemonOptions) throws -> FileLock {
        let directory = options.stateDirectory
        try StateDirectory.make(directory)
        return try FileLock(directory: directory, name: lifetimeLockName, mode: .exclusive, timeout: options.lockTimeout,
                            owner: "another snapstack daemon", subject: "\(directory)",
                            remedy: "stop that daemon first (systemctl stop snapstack.service), or give this one another --state-dir")
    }

    /// Checks the configuration file, as `snapstack daemon --check-config` does: what it says,
    /// one line a rule, or the error (`FILE:LINE:COLUMN: reason`).
    public static func checkConfiguration(path: String) -> Result<String, PolicyError> {
        PolicyHolder(path: path, explicit: true).load().map { policy in
            var lines = ["\(path): \(policy.rules.count) rule(s)"]
            for (index, rule) in policy.rules.enumerated() {
                let action: String
                switch rule.action {
                case .exclude: action = "exclude"
                case .protect(let protect):
                    action = "protect as \(protect.name)"
                        + (protect.cbtBlock.map { $0 == ProtectAction.automaticCBTBlock ? ", cbt-block by device size" : ", cbt-block \($0.rawValue) bytes" }
                            ?? ", no change tracking")
                }
                let matches = rule.properties.map { "\($0.property)=\($0.globs.map(\.pattern).joined(separator: "|"))" }
                    + (rule.minimumSize.map { ["size>=\($0.rawValue)"] } ?? []) + (rule.maximumSize.map { ["size<=\($0.rawValue)"] } ?? [])
                lines.append("  \(index + 1). line \(rule.line)\(rule.label.map { " \"\($0)\"" } ?? ""): "
                             + "\(matches.isEmpty ? "every device" : matches.joined(separator: " ")) -> \(action)")
            }
            let stores = policy.stores
            lines.append("stores: watch \(stores.enabled ? "on" : "off"), threshold \(Int((stores.threshold * 100).rounded()))%, grow by "
                         + (stores.step.map { "\($0.rawValue) bytes" } ?? "doubling") + ", max "
                         + (stores.limit.map { "\($0.rawValue) bytes" } ?? "none") + ", every \(stores.pollInterval)")
            lines.append("metrics: " + (policy.metrics.file.map { "written to \($0) every \(policy.metrics.interval) and after each operation" } ?? "off"))
            return lines.joined(separator: "\n")
        }
    }
}

/// Runs a service whose failure must not stop the others: the store watch failing leaves the
/// stacks and hotplug running, and says so.
struct Contained: Service {
    let name: String
    let logger: Logger
    let service: any Service

    func run() async throws {
        do {
            try await service.run()
        } catch is CancellationError {
        } catch {
            logger.error("\(name) stopped: \(error)")
        }
    }
}
