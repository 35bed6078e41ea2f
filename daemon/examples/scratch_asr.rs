use edgevoice::speech::{SpeechRecognizer, WhisperConfig, WhisperRecognizer};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let raw = std::fs::read(&args[1]).unwrap();
    let pcm: Vec<f32> = raw
        .chunks(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0)
        .collect();
    for sized in [true, false] {
        let mut cfg = WhisperConfig::new("/work/shared/models/whisper/ggml-tiny.en-q8_0.bin");
        cfg.sized_audio_ctx = sized;
        let r = WhisperRecognizer::load(cfg).unwrap();
        let t = std::time::Instant::now();
        let tr = r.transcribe(&pcm).unwrap();
        println!(
            "sized={sized} {:?} {:?} words={:?}",
            t.elapsed(),
            tr.text,
            tr.segments
                .iter()
                .flat_map(|s| s
                    .words
                    .iter()
                    .map(|w| (w.text.clone(), w.start_ms, w.end_ms)))
                .collect::<Vec<_>>()
        );
    }
}
