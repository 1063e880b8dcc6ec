import DeviceMapper
import Foundation

/// One end-to-end check against the real kernel.
struct Scenario: Sendable {
    var name: String
    var body: @Sendable (Lab) throws -> Void
    init(_ name: String, _ body: @escaping @Sendable (Lab) throws -> Void) {
        self.name = name
        self.body = body
    }
}

let usage = """
    usage: snapstack-vmsuite [--capture DIR] [--filter TEXT] [--list]
    Runs the VM tier as root against the real kernel's device-mapper (see Tests/lab/vm.sh).
    --capture DIR   write the kernel's table and status lines to DIR (unit-test fixtures)
    --filter TEXT   run only the scenarios whose name contains TEXT (A|B: either)
    --list          print the scenario names
    """

var captureDirectory: URL?
var filter: String?
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--capture": captureDirectory = arguments.popFirst().map { URL(fileURLWithPath: $0) }
    case "--filter": filter = arguments.popFirst().flatMap { $0.isEmpty ? nil : $0 }
    case "--list":
        for scenario in allScenarios { print(scenario.name) }
        exit(0)
    default:
        FileHandle.standardError.write(Data((usage + "\n").utf8))
        exit(64)
    }
}

var allScenarios: [Scenario] {
    ClientScenarios.all + LoopScenarios.all + SnapshotScenarios.all + EraScenarios.all + ChangeTrackingScenarios.all + CommandScenarios.all + OrchestratorScenarios.all + ExportScenarios.all
        + DaemonScenarios.all
        + StoreWatchScenarios.all
        + BackupScenarios.all
        + CompletionScenarios.all
        + MetricsScenarios.all
        + SignalScenarios.all
}

guard getuid() == 0, (try? DeviceMapperClient().driverVersion()) != nil else {
    FileHandle.standardError.write(Data("snapstack-vmsuite: needs root and a kernel with device-mapper; run it through Tests/lab/vm.sh\n".utf8))
    print("0 passed, 1 failed")
    exit(1)
}
if let captureDirectory {
    try FileManager.default.createDirectory(at: captureDirectory, withIntermediateDirectories: true)
}

/// A scenario that hangs (I/O on a device left suspended does) must fail the suite loudly
/// rather than run into the lab's wall-clock limit without saying where it stuck.
let scenarioLimit: Double = 900
nonisolated(unsafe) var current = ""
let watchdog = DispatchSource.makeTimerSource(queue: DispatchQueue.global())
watchdog.setEventHandler {
    print("FAIL  \(current): still running after \(Int(scenarioLimit)) s; stopping the suite")
    print("\(passed) passed, \(failed + 1) failed")
    exit(1)
}
watchdog.activate()

nonisolated(unsafe) var passed = 0, failed = 0
for scenario in allScenarios where filter.map({ $0.split(separator: "|").contains { scenario.name.contains($0) } }) ?? true {
    let started = Date()
    current = scenario.name
    watchdog.schedule(deadline: .now() + scenarioLimit)
    var problems: [String] = []
    do {
        let lab = try Lab(scenario: "s\(passed + failed)", captureDirectory: captureDirectory)
        do { try scenario.body(lab) } catch { problems.append("\(error)") }
        // Clean-up problems fail the scenario too: a leaked device is a bug.
        problems += lab.tearDown()
    } catch {
        problems.append("setting up: \(error)")
    }
    let seconds = String(format: "%.1f", Date().timeIntervalSince(started))
    if problems.isEmpty {
        passed += 1
        print("PASS  \(scenario.name) (\(seconds) s)")
    } else {
        failed += 1
        print("FAIL  \(scenario.name) (\(seconds) s)")
        for problem in problems { print("      \(problem)") }
    }
    // Through a pipe stdout is block-buffered: show each result as it comes.
    fflush(nil)
}
print("\(passed) passed, \(failed) failed")
exit(failed == 0 && passed > 0 ? 0 : 1)
