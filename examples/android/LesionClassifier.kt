// A skinedge .tflite (fp32 or fp16) in MediaPipe Tasks' ImageClassifier, on Android.
// Not compiled or run in this repository: see README.md beside it.
import android.content.Context
import android.graphics.Bitmap
import com.google.mediapipe.framework.image.BitmapImageBuilder
import com.google.mediapipe.tasks.core.BaseOptions
import com.google.mediapipe.tasks.vision.core.RunningMode
import com.google.mediapipe.tasks.vision.imageclassifier.ImageClassifier
import kotlin.math.exp

class LesionClassifier(context: Context, asset: String = "lesions_fp32.tflite") : AutoCloseable {
    // Normalisation and labels come from the file's TFLite metadata; no max results: every class.
    private val classifier = ImageClassifier.createFromOptions(
        context,
        ImageClassifier.ImageClassifierOptions.builder()
            .setBaseOptions(BaseOptions.builder().setModelAssetPath(asset).build())
            .setRunningMode(RunningMode.IMAGE)
            .build(),
    )

    /** Class code (labels.txt) to probability. [square]: the lesion cropped to a centred square
     *  (MediaPipe squashes the whole frame; skinedge centre-crops). */
    fun classify(square: Bitmap): Map<String, Float> {
        val categories = classifier.classify(BitmapImageBuilder(square).build())
            .classificationResult().classifications()[0].categories()
        val top = categories.maxOf { it.score() }  // scores are logits: softmax them
        val e = categories.associate { it.categoryName() to exp(it.score() - top) }
        return e.mapValues { it.value / e.values.sum() }
    }

    override fun close() = classifier.close()
}
