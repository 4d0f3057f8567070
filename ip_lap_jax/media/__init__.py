"""Media I/O without a system ffmpeg: audio decoding and mel features (`audio`), video
decoding at 25 fps and H.264 writing (`video`), the invisible watermark (`watermark`)."""
