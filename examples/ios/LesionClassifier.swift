// A skinedge .tflite (fp32 or fp16) in MediaPipe Tasks' ImageClassifier, on iOS.
// Not compiled or run in this repository: see README.md beside it.
import Foundation
import MediaPipeTasksVision
import UIKit

final class LesionClassifier {
    private let classifier: ImageClassifier

    init(resource: String = "lesions_fp32") throws {
        let options = ImageClassifierOptions()  // normalisation and labels: the file's metadata
        options.baseOptions.modelAssetPath = Bundle.main.path(forResource: resource, ofType: "tflite")!
        options.runningMode = .image  // maxResults left at -1: every class
        classifier = try ImageClassifier(options: options)
    }

    /// Class code (labels.txt) to probability. `square`: the lesion cropped to a centred square
    /// (MediaPipe squashes the whole frame; skinedge centre-crops).
    func classify(_ square: UIImage) throws -> [String: Float] {
        let result = try classifier.classify(image: try MPImage(uiImage: square))
        let categories = result.classificationResult.classifications[0].categories
        let top = categories.map(\.score).max() ?? 0  // scores are logits: softmax them
        let e = categories.map { (($0.categoryName ?? "\($0.index)"), exp($0.score - top)) }
        let sum = e.reduce(0) { $0 + $1.1 }
        return Dictionary(uniqueKeysWithValues: e.map { ($0.0, $0.1 / sum) })
    }
}
