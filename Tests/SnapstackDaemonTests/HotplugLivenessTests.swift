import Foundation
import Logging
import ServiceLifecycleTestKit
import SystemPackage
import Testing
import BlockIO
@testable import SnapstackDaemon
@testable import Udev

/// The daemon's event loop and its end: only a shutdown may end it quietly.
@Suite struct HotplugLivenessTests {
    private func service(logger: Logger = Logger(label: "test")) -> HotplugService {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("snapstack-daemon-\(UUID().uuidString)").path
        return HotplugService(options: DaemonOptions(stateDirectory: FilePath(directory), configPath: "/nonexistent"),
                              policy: PolicyHolder(path: "/nonexistent", explicit: false),
                              notifier: SystemdNotifier(environment: [:]), worker: Worker(),
                              logger: logger)
    }

    @Test("events the monitor had to drop make the daemon look at every device again, and say so")
    func droppedEventsResynchronize() async throws {
        let recorded = RecordedMessages()
        let logger = Logger(label: "test") { _ in RecordingHandler(messages: recorded) }
        let device = UdevDevice(sysPath: "/sys/devices/virtual/block/none", sysName: "none", subsystem: "block", deviceType: "disk",
                                deviceNode: nil, number: DeviceNumber(major: 0, minor: 0), properties: [:])
        let events = AsyncStream<UdevEvent> { continuation in
            continuation.yield(UdevEvent(action: .other("bind"), device: device, sequenceNumber: 1))
            continuation.yield(UdevEvent(action: .other("bind"), device: device, sequenceNumber: 2))
            continuation.finish()
        }
        let drops = DropCounter()
        for _ in 0..<3 { drops.add() }
        let hotplug = service(logger: logger)
        defer { try? FileManager.default.removeItem(atPath: hotplug.options.stateDirectory.string) }
        // The policy is empty and the state new: the look at the host's devices changes nothing.
        await #expect(throws: (any Error).self) { try await hotplug.serve(events, dropped: { drops.take() }) }
        let messages = recorded.all
        #expect(messages.filter { $0.contains("3 udev event(s) dropped") }.count == 1, "\(messages)")
        #expect(messages.contains { $0.hasPrefix("looked at ") && $0.hasSuffix("present block device(s) again after dropped events") },
                "\(messages)")
    }

    @Test("events that end without a shutdown (the monitor thread or its socket failed) are an error, so that systemd restarts the daemon")
    func eventsEndingIsAFailure() async throws {
        let ended = AsyncStream<UdevEvent> { $0.finish() }
        let error = await #expect(throws: (any Error).self) { try await service().serve(ended) }
        #expect("\(error.map { "\($0)" } ?? "")".contains("the udev monitor stopped"))
    }

    @Test("a graceful shutdown ends the loop without an error")
    func shutdownEndsQuietly() async throws {
        let (open, continuation) = AsyncStream<UdevEvent>.makeStream()
        defer { continuation.finish() }
        try await testGracefulShutdown { trigger in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await service().serve(open) }
                try await Task.sleep(for: .milliseconds(50))
                trigger.triggerGracefulShutdown()
                try await group.waitForAll()
            }
        }
    }
}

/// Messages logged, in order.
final class RecordedMessages: @unchecked Sendable {
    private let lock = NSLock()
    private var messages: [String] = []
    func append(_ message: String) { lock.withLock { messages.append(message) } }
    var all: [String] { lock.withLock { messages } }
}

struct RecordingHandler: LogHandler {
    let messages: RecordedMessages
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
        messages.append("\(message)")
    }
}
