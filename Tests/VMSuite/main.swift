import DeviceMapper
import Foundation

/// One end-to-end check against the real kernel.
struct Scenario: Sendable {
    var name: String
    var body: @Sendable (Lab) throws -> Void
    /// About how long it takes under TCG. Only the order in which workers sharing a queue
    /// claim scenarios uses it: the longest go first, so that no worker is left with a long
    /// one at the end while the other idles.
    var seconds: Int = 30
    var tier: Tier = .ci
    init(_ name: String, _ body: @escaping @Sendable (Lab) throws -> Void) {
        self.name = name
        self.body = body
    }

    func lasting(_ seconds: Int) -> Scenario {
        var copy = self
        copy.seconds = seconds
        return copy
    }

    /// Runs only in the nightly tier: a long repetition or measurement of what CI scenarios
    /// already cover once.
    func nightly() -> Scenario {
        var copy = self
        copy.tier = .nightly
        return copy
    }
}

/// Which scenarios run, and how long their repetitions are. CI runs `ci`: every property once.
/// `nightly` adds the long repetitions and measurements (see `Scenario.nightly()`) and runs the
/// repeated scenarios at full length (every failpoint, 25 signal rounds a series).
enum Tier: String {
    case ci, nightly
    nonisolated(unsafe) static var current = Tier.ci

    /// How long a repetition is in the tier that runs: `ci` in CI, `nightly` in the nightly run.
    static func length<T>(ci: T, nightly: T) -> T {
        current == .nightly ? nightly : ci
    }
}

let usage = """
    usage: snapstack-vmsuite [--capture DIR] [--filter TEXT] [--tier ci|nightly] [--queue DIR] [--list]
    Runs the VM tier as root against the real kernel's device-mapper (see Tests/lab/vm.sh).
    --capture DIR   write the kernel's table and status lines to DIR (unit-test fixtures)
    --filter TEXT   run only the scenarios whose name contains TEXT (A|B: either)
    --tier TIER     ci (the default): what CI runs; nightly: also the long repetitions and
                    measurements, and every repeated scenario at full length
    --queue DIR     share the scenarios with other workers given the same DIR (a directory
                    every VM can write): each runs the ones it claims first, longest first
    --list          print the names of the scenarios selected
    """

var captureDirectory: URL?
var filter: String?
var queue: String?
var listOnly = false
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--capture": captureDirectory = arguments.popFirst().map { URL(fileURLWithPath: $0) }
    case "--filter": filter = arguments.popFirst().flatMap { $0.isEmpty ? nil : $0 }
    case "--queue": queue = arguments.popFirst()
    case "--tier":
        guard let tier = arguments.popFirst().flatMap(Tier.init(rawValue:)) else {
            FileHandle.standardError.write(Data("snapstack-vmsuite: --tier takes ci or nightly\n".utf8))
            exit(64)
        }
        Tier.current = tier
    case "--list": listOnly = true
    default:
        FileHandle.standardError.write(Data((usage + "\n").utf8))
        exit(64)
    }
}

let selected = allScenarios.filter { scenario in
    (scenario.tier == .ci || Tier.current == .nightly) && filter.map { $0.split(separator: "|").contains { scenario.name.contains($0) } } ?? true
}
if listOnly {
    for scenario in selected { print(scenario.name) }
    exit(0)
}

var allScenarios: [Scenario] {
    ClientScenarios.all + LoopScenarios.all + SnapshotScenarios.all + EraScenarios.all + ChangeTrackingScenarios.all + CommandScenarios.all + OrchestratorScenarios.all + ExportScenarios.all
        + DaemonScenarios.all
        + StoreWatchScenarios.all
        + BackupScenarios.all
        + CompletionScenarios.all
        + MetricsScenarios.all
        + SignalScenarios.all
        + CrashCutScenarios.all
        + AdoptionScenarios.all
        + PhysicalVolumeScenarios.all
        + VolumeStoreScenarios.all
        + FaultScenarios.all
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

/// Whether this worker runs `scenario`: always without a queue; with one, only when it is
/// the first to create the scenario's claim (mkdir is atomic on the host's file system, which
/// every worker's VM reaches through 9p).
@MainActor func claim(_ scenario: Scenario) -> Bool {
    guard let queue else { return true }
    let index = allScenarios.firstIndex { $0.name == scenario.name } ?? -1
    if mkdir("\(queue)/claim-\(index)", 0o755) == 0 { return true }
    guard errno == EEXIST else {
        print("FAIL  \(scenario.name): cannot claim it in the queue \(queue): \(String(cString: strerror(errno)))")
        print("\(passed) passed, \(failed + 1) failed")
        exit(1)
    }
    return false
}

let order = queue == nil ? selected : selected.enumerated().sorted { ($0.element.seconds, -$0.offset) > ($1.element.seconds, -$1.offset) }.map(\.element)
nonisolated(unsafe) var passed = 0, failed = 0
// The binary and its libraries go into the guest's RAM (and LD_LIBRARY_PATH) before any
// scenario starts a thread.
_ = CommandScenarios.snapstack
for scenario in order where claim(scenario) {
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
// Alone, a run that passed nothing proves nothing; in a queue, the other workers may have
// claimed everything (test-all.sh checks that the workers' counts add up).
exit(failed == 0 && (passed > 0 || queue != nil) ? 0 : 1)
