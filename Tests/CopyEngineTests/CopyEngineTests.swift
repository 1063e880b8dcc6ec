import Testing
@testable import CopyEngine
