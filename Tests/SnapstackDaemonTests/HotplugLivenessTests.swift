import Foundation
import Logging
import ServiceLifecycleTestKit
import SystemPackage
import Testing
import Udev
@testable import SnapstackDaemon

/// The daemon's event loop and its end: only a shutdown may end it quietly.
@Suite struct HotplugLivenessTests {
    private func service() -> HotplugService {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("snapstack-daemon-\(UUID().uuidString)").path
        return HotplugService(options: DaemonOptions(stateDirectory: FilePath(directory), configPath: "/nonexistent"),
                              policy: PolicyHolder(path: "/nonexistent", explicit: false),
                              notifier: SystemdNotifier(environment: [:]), worker: Worker(),
                              logger: Logger(label: "test"))
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
