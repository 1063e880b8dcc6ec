import BlockIO
import Foundation
import Logging
import Policy
import ServiceLifecycle
import Snapstack
import SnapstackErrors
import Synchronization
import SystemPackage
import Udev
import UnixSignals

/// The policy in force, replaced as a whole when a reload succeeds.
final class PolicyHolder: Sendable {
    private let current: Mutex<Policy>
    let path: String
    /// Whether the path was named (`--config`): then a missing file is an error, whereas a
    /// missing default file means "no policy".
    let explicit: Bool

    init(path: String, explicit: Bool) {
        self.path = path
        self.explicit = explicit
        current = Mutex(.empty)
    }

    var policy: Policy { current.withLock { $0 } }

    /// Reads the file; on success it becomes the policy, on failure the last good one stays.
    func load() -> Result<Policy, PolicyError> {
        let result: Result<Policy, PolicyError>
        if !explicit && !FileManager.default.fileExists(atPath: path) {
            result = .success(Policy(file: path))
        } else {
            result = Result { () throws(PolicyError) in try Policy.load(path: path) }
        }
        if case .success(let policy) = result { current.withLock { $0 = policy } }
        return result
    }
}

/// Re-reads the configuration on SIGHUP (`systemctl reload snapstack`). A file with errors is
/// reported — file, line, column and reason — and the policy in force stays.
struct ReloadService: Service {
    let policy: PolicyHolder
    let notifier: SystemdNotifier
    let logger: Logger
    /// The policy's udev rules, rewritten from each policy that loads.
    var rules: PolicyUdevRules? = nil

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            notifier.reloading()
            switch policy.load() {
            case .success(let loaded):
                logger.notice("configuration reloaded", metadata: ["config": "\(policy.path)", "rules": "\(loaded.rules.count)"])
                rules?.install(loaded)
            case .failure(let error):
                logger.error("bad configuration, keeping the previous policy: \(error)",
                             metadata: ["config": "\(error.file)", "line": "\(error.line)"])
            }
            notifier.ready(status: "watching for block devices; \(policy.policy.rules.count) auto-protect rule(s)")
        }
    }
}

/// The heart of the daemon: at start, `reconcile` (every protected disk that is present gets
/// its stack back, change tracking continuing from its era metadata when the clean stop's
/// record proves the disk was left alone) and the policy applied
/// to the devices already present; then, for each udev event on a block device, `add`
/// rebuilds the stack of a protected disk or applies the auto-protect policy, and `remove`
/// tears down what belonged to the disk that went away. Events are handled one at a time, in
/// order, each under the state lock for just that operation, so that the command line keeps
/// working beside the daemon.
struct HotplugService: Service {
    let options: DaemonOptions
    let policy: PolicyHolder
    let notifier: SystemdNotifier
    let worker: Worker
    let logger: Logger
    /// Called after each operation, done or failed: the metrics follow.
    var onChange: @Sendable () -> Void = {}
    /// The policy's udev rules, which hide a disk the policy will protect from its first
    /// event; nil: none (tests).
    var rules: PolicyUdevRules? = nil
    let events = Counter()

    final class Counter: Sendable {
        private let value = Atomic<Int>(0)
        func increment() -> Int { value.add(1, ordering: .relaxed).newValue }
    }

    func run() async throws {
        // The rules first: a disk plugged from now on is hidden until it is stacked. Earlier
        // releases are forgotten: the boot-time pass looks at every present device again.
        rules?.forgetAll()
        rules?.install(policy.policy)
        // Listening starts before the boot-time pass: a disk that appears meanwhile is queued
        // in the socket, not missed.
        let monitor = try UdevMonitor()
        notifier.status("rebuilding the stacks of protected disks")
        await boot()
        let count = (try? await locked("count protected devices") { $0.protectedCount() }) ?? 0
        notifier.ready(status: "watching for block devices; \(count) protected device(s), \(policy.policy.rules.count) auto-protect rule(s)")
        logger.notice("ready", metadata: ["protected": "\(count)", "rules": "\(policy.policy.rules.count)"])

        try await serve(monitor, dropped: { monitor.takeDropped() })
        notifier.stopping()
        await recordCleanStop()
        rules?.remove()
        logger.notice("stopping")
    }

    /// What proves, at the next boot, that a disk was left alone while it had no stack: each
    /// unused top's filesystem stamp (`Orchestrator.recordCleanStop`). At a shutdown systemd
    /// stops the daemon after unmounting what fstab mounted, so every such disk is unused by
    /// now. Without this record, the next rebuild interrupts the disk's change tracking.
    func recordCleanStop() async {
        do {
            let recorded = try await locked("record the clean stop") { try $0.recordCleanStop() }
            // The names in the message itself: what an administrator reads in the journal.
            logger.notice("clean stop recorded for \(recorded.isEmpty ? "no unused protected disk" : recorded.joined(separator: ", "))")
        } catch {
            logger.error("could not record the clean stop; change tracking of unused disks is interrupted at their next rebuild: \(error)")
        }
    }

    /// Handles events until a graceful shutdown ends the sequence. Events that end for any other
    /// reason (the monitor thread could not start, or its socket failed) are an error: the
    /// daemon then exits non-zero and systemd restarts it (`Restart=on-failure`), instead of
    /// exiting 0 and leaving hotplug unwatched until the next boot.
    ///
    /// Events the monitor had to drop (`dropped` counts them; its queue is bounded) are made
    /// up for by looking at every device again, as at boot: reconcile, then the policy.
    func serve<Events: AsyncSequence & Sendable>(_ source: Events, dropped: @escaping @Sendable () -> Int = { 0 }) async throws
        where Events.Element == UdevEvent {
        for try await event in source.cancelOnGracefulShutdown() {
            let received = ContinuousClock.now
            switch event.action {
            case .add: await appeared(event.device, coldplug: false, received: received)
            case .remove: await vanished(event.device)
            case .change: await changed(event.device)
            default: break
            }
            let handled = events.increment()
            logger.debug("event handled", metadata: ["action": "\(event.action)", "device": "\(event.device.sysName)",
                                                     "seqnum": "\(event.sequenceNumber)", "events": "\(handled)"])
            let lost = dropped()
            if lost > 0 {
                logger.warning("\(lost) udev event(s) dropped: more than \(UdevMonitor.queueLimit) were waiting; looking at every block device again")
                await resynchronize()
            }
        }
        guard Task.isShuttingDownGracefully || Task.isCancelled else {
            logger.critical("the udev monitor stopped: hotplug events are no longer received")
            throw SnapstackError(.failed, "the udev monitor stopped", why: "its event stream ended without a shutdown",
                                 remedy: "systemd restarts the daemon (Restart=on-failure); see the journal for the cause")
        }
    }

    // MARK: Boot

    static let bootReconcileAttempts = 5

    func boot() async {
        let started = ContinuousClock.now
        func step(_ what: String) {
            logger.debug("boot: \(what)", metadata: ["elapsed": "\(Self.milliseconds(ContinuousClock.now - started)) ms"])
        }
        // A reconcile that fails (the state locked by a command run from a boot script, a
        // device not yet settled) is tried again, waiting 1, 2, 4 and 8 s: the stacks it
        // rebuilds are what local-fs-pre.target waits for.
        for attempt in 1...Self.bootReconcileAttempts {
            do {
                try await reconcile()
                break
            } catch {
                guard attempt < Self.bootReconcileAttempts, !Task.isShuttingDownGracefully else {
                    logger.error("reconcile at start failed \(attempt) time(s), giving up (a disk's next udev event rebuilds its stack; `snapstack reconcile` rebuilds all): \(error)")
                    break
                }
                let wait = 1 << (attempt - 1)
                logger.warning("reconcile at start failed (attempt \(attempt) of \(Self.bootReconcileAttempts)), again in \(wait) s: \(error)")
                notifier.status("reconcile failed; retrying in \(wait) s")
                try? await Task.sleep(for: .seconds(wait))
            }
        }
        step("reconciled")
        // Members are hidden from udev again, also where the persistent markers were not
        // readable at coldplug (/var mounted later); then udev is let finish, so that the
        // by-uuid links point at the top devices before local-fs-pre.target is reached.
        _ = try? await locked("republish members") { try $0.republishMembers() }
        step("members republished")
        let idle = (try? await worker.perform { try UdevContext().waitUntilIdle(timeout: 30) }) ?? false
        step(idle ? "udev is idle" : "udev is still busy after 30 s")
        step("policy applied to \(await applyPolicyToPresentDevices()) present device(s)")
    }

    /// The policy applied to the disks that are present, as udev's coldplug replays `add`; returns
    /// how many there were.
    func applyPolicyToPresentDevices() async -> Int {
        let devices = (try? await worker.perform { try UdevContext().blockDevices() }) ?? []
        for device in devices where device.deviceNode != nil {
            await appeared(device, coldplug: true, received: .now)
        }
        return devices.count
    }

    /// One reconcile over every protected device, each repair logged. An era layer bypassed
    /// because its metadata failed stays bypassed: the admin's `snapstack reconcile` puts it
    /// back, once the metadata's device is known to work.
    func reconcile() async throws {
        let actions = try await locked("reconcile") { orchestrator in
            try orchestrator.reconcile(restoreTracking: false).map { "\($0.subject): \($0.action)" }
        }
        for action in actions { logger.notice("reconcile: \(action)") }
    }

    /// After events were lost: what they would have done, found from the devices themselves.
    func resynchronize() async {
        do {
            try await reconcile()
        } catch {
            logger.error("reconcile after dropped events failed: \(error)")
        }
        let present = await applyPolicyToPresentDevices()
        logger.notice("looked at \(present) present block device(s) again after dropped events")
    }

    // MARK: Events

    func appeared(_ device: UdevDevice, coldplug: Bool, received: ContinuousClock.Instant) async {
        guard let node = device.deviceNode, let size = Self.size(of: device.number), size > .zero,
              !Self.isOurs(device, stateDirectory: options.stateDirectory) else { return }
        var log = logger
        log[metadataKey: "device"] = "\(node)"
        log[metadataKey: "action"] = coldplug ? "present" : "add"
        let elapsed = { "\(Self.milliseconds(ContinuousClock.now - received)) ms" }
        // Whatever the policy's rules hid and the daemon does not protect is shown again (the
        // disk of a protected device stays hidden all the same: by its member marker).
        let hidden = device.properties[Policy.udevTag] != nil
        func release(_ why: String) {
            guard hidden, let rules else { return }
            rules.release(device.number)
            log.info("shown to mounters again: \(why)")
        }
        do {
            switch try await locked("restack \(node)", { try $0.restack(device) }) {
            case .rebuilt(let name):
                log.notice("stack rebuilt over the disk of \(name)", metadata: ["name": "\(name)", "elapsed": "\(elapsed())"])
                return
            case .alreadyStacked(let name):
                log.debug("already stacked", metadata: ["name": "\(name)"])
                return
            case .waiting(let name, let why):
                log.warning("cannot rebuild the stack of \(name) yet: \(why)", metadata: ["name": "\(name)"])
                return
            case .notProtected:
                break
            }
        } catch {
            log.error("cannot rebuild the stack: \(error)")
            release("not stacked")
            return
        }

        // The policy decides on what udev said of the device, not on what snapstack's rules
        // made of it to hide it.
        var properties = Policy.propertiesBeforeHiding(device.properties)
        properties["KERNEL"] = device.sysName
        let current = policy.policy
        switch current.decision(properties: properties, size: size) {
        case .noMatch:
            if coldplug { log.debug("no rule matches") } else { log.info("no rule matches") }
            release("no rule matches it now")
        case .exclude(let rule):
            if coldplug { log.debug("excluded by \(rule)") } else { log.info("excluded by \(rule)") }
            release("excluded by \(rule)")
        case .protect(let name, let cbtBlock, let rule):
            guard !name.isEmpty else {
                log.error("\(rule) gives this device an empty name; fix the name template in \(current.file)")
                release("not protected")
                return
            }
            do {
                let top = try await locked("protect \(node)") { orchestrator in
                    try orchestrator.protect(devicePath: node, name: name, options: ProtectOptions(cbtBlock: cbtBlock)).path
                }
                log.notice("protected as \(top) by \(rule)", metadata: ["name": "\(name)", "elapsed": "\(elapsed())"])
            } catch let error as SnapstackError where error.kind == .refused {
                log.warning("\(rule) matches, but it is left alone: \(error)", metadata: ["name": "\(name)"])
                release("left alone")
            } catch {
                log.error("\(rule) matches, but protecting it failed: \(error)", metadata: ["name": "\(name)"])
                release("not protected")
            }
        }
    }

    func vanished(_ device: UdevDevice) async {
        guard !Self.isOurs(device, stateDirectory: options.stateDirectory) else { return }
        rules?.forget(device.number)
        var log = logger
        log[metadataKey: "device"] = "\(device.deviceNode ?? device.sysName)"
        log[metadataKey: "action"] = "remove"
        do {
            guard let outcome = try await locked("tear down after \(device.sysName)", { try $0.tearDownVanished(device.number) }) else {
                log.debug("not a protected disk")
                return
            }
            if outcome.deferred.isEmpty {
                log.notice("disk of \(outcome.name) went away; its stack is removed", metadata: ["name": "\(outcome.name)"])
            } else {
                log.warning("disk of \(outcome.name) went away; \(outcome.deferred.joined(separator: ", ")) still open: they fail every I/O and go when closed",
                            metadata: ["name": "\(outcome.name)"])
            }
        } catch {
            log.error("cannot tear down the stack of the disk that went away: \(error)")
        }
    }

    /// A device-mapper device changed (a resume sends `change`): if it is an adopted device
    /// that another program reloaded (lvextend, lvchange --refresh, pvmove), its tracking is
    /// recorded as interrupted and it is adopted again over its new table, at once.
    func changed(_ device: UdevDevice) async {
        guard let name = device.properties["DM_NAME"], !Self.isOurs(device, stateDirectory: options.stateDirectory) else { return }
        var log = logger
        log[metadataKey: "device"] = "\(device.deviceNode ?? device.sysName)"
        log[metadataKey: "action"] = "change"
        do {
            guard let outcome = try await locked("check the tracking of \(device.sysName)", { try $0.readoptIfBypassed(dmName: name) }) else { return }
            log.warning("change tracking of \(outcome.name) interrupted: \(outcome.why); adopted again over its new table; the next incremental needs a full export",
                        metadata: ["name": "\(outcome.name)"])
        } catch {
            log.error("cannot adopt \(device.sysName) again after a foreign reload: \(error)")
        }
        onChange()
    }

    // MARK: Helpers

    /// Runs `body` on the worker with the state opened under the exclusive lock, taken for this
    /// operation only. While another snapstack holds the lock longer than the lock timeout (a
    /// long merge), it tries again, until shutdown.
    func locked<T: Sendable>(_ what: String, _ body: @escaping @Sendable (Orchestrator) throws -> T) async throws -> T {
        let state = options.stateDirectory, timeout = options.lockTimeout
        let logger = self.logger
        while true {
            do {
                defer { onChange() }
                return try await worker.perform {
                    let orchestrator = try Orchestrator(stateDirectory: state, lockTimeout: timeout)
                    orchestrator.notice = { logger.warning("\($0)") }
                    return try body(orchestrator)
                }
            } catch let error as SnapstackError where error.kind == .locked && !Task.isShuttingDownGracefully && !Task.isCancelled {
                logger.warning("\(what): \(error); trying again")
            }
        }
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }

    static func size(of number: DeviceNumber) -> Bytes? {
        guard let text = try? String(contentsOfFile: "/sys/dev/block/\(number)/size", encoding: .utf8),
              let sectors = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return nil }
        return Sectors(sectors).bytes
    }

    /// snapstack's own dm devices, and the loop devices of its era metadata and stores: never
    /// candidates for protection, and their removal is no disk going away.
    static func isOurs(_ device: UdevDevice, stateDirectory: FilePath) -> Bool {
        let uuid = device["DM_UUID"] ?? (try? String(contentsOfFile: "/sys/dev/block/\(device.number)/dm/uuid", encoding: .utf8))
        if let uuid, uuid.hasPrefix(Layout.uuidPrefix) { return true }
        if device.number.major == 7,
           let file = try? String(contentsOfFile: "/sys/dev/block/\(device.number)/loop/backing_file", encoding: .utf8),
           file.hasPrefix(stateDirectory.string + "/") {
            return true
        }
        return false
    }
}

extension Orchestrator {
    /// How many devices are protected, for the daemon's status line.
    func protectedCount() -> Int {
        (try? deviceSummaries().count) ?? 0
    }
}
